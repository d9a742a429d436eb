"""MLflow: the only package that imports it.

Workers get a :class:`TrackingContext` (plain data) and talk to the store through an explicit
``MlflowClient``: the fluent API's active run, tracking URI and experiment are per process and
would not follow a trial to a Dask worker.

- :mod:`~taxi_hpo.tracking.store`: reaching and creating the store, retries;
- :mod:`~taxi_hpo.tracking.parent`: the search's parent run, opened or resumed, then closed;
- :mod:`~taxi_hpo.tracking.runs`: child runs and the guard (one preprocessor artifact a search);
- :mod:`~taxi_hpo.tracking.resume`: a search as the store remembers it (resume, warm start);
- :mod:`~taxi_hpo.tracking.registry`: the registered model and the choice of the trial for it;
- :mod:`~taxi_hpo.tracking.reading`: what the report reads and writes;
- :mod:`~taxi_hpo.tracking.names`: the names of tags, artifacts and the model.

A registered model of taxi-hpo 0.1.0 names ``taxi_hpo.tracking.DurationPyfunc``: it is here.
"""

from taxi_hpo.tracking.names import (
    ALIAS,
    BOOSTER_DIR,
    BOOSTER_FILE,
    CURVE_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    FAILED_TAG_PREFIX,
    FIDELITY_TAG,
    MODEL_NAME,
    PREPROCESSOR_DIR,
    PREPROCESSOR_FILE,
    PREPROCESSOR_TAG,
    PROMOTED_FROM_TAG,
    PRUNED_TAG,
    RUNG_TAG,
    TRIAL_TAG,
    WARM_FROM_TAG,
    WARM_TAG,
)
from taxi_hpo.tracking.parent import ParentRun, parent_run
from taxi_hpo.tracking.reading import experiment_id_by_name, get_run, log_artifacts
from taxi_hpo.tracking.registry import DurationPyfunc, qualifying, register_best, register_model, requirements
from taxi_hpo.tracking.resume import SearchRecord, best_points, is_complete, latest_search, load_search
from taxi_hpo.tracking.runs import (
    child_runs,
    close_stale_children,
    count_preprocessor_artifacts,
    fail_child_run,
    finish_child_run,
    finished_trial_run,
    log_preprocessor_once,
    mark_trial_failed,
    start_child_run,
)
from taxi_hpo.tracking.store import (
    TrackingContext,
    check_reachable,
    download_artifact,
    end_run,
    experiment_name,
    prepare_store,
    reopen_run,
    retrying,
    run_status,
    start_parent_run,
    tag_run,
    ui_link,
    warm,
)

__all__ = [
    "ALIAS",
    "BOOSTER_DIR",
    "BOOSTER_FILE",
    "CURVE_TAG",
    "DurationPyfunc",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "FAILED_TAG_PREFIX",
    "FIDELITY_TAG",
    "MODEL_NAME",
    "PREPROCESSOR_DIR",
    "PREPROCESSOR_FILE",
    "PREPROCESSOR_TAG",
    "ParentRun",
    "PROMOTED_FROM_TAG",
    "PRUNED_TAG",
    "RUNG_TAG",
    "SearchRecord",
    "TRIAL_TAG",
    "TrackingContext",
    "WARM_FROM_TAG",
    "WARM_TAG",
    "best_points",
    "check_reachable",
    "child_runs",
    "close_stale_children",
    "count_preprocessor_artifacts",
    "download_artifact",
    "end_run",
    "experiment_id_by_name",
    "experiment_name",
    "fail_child_run",
    "finish_child_run",
    "finished_trial_run",
    "get_run",
    "is_complete",
    "latest_search",
    "load_search",
    "log_artifacts",
    "log_preprocessor_once",
    "mark_trial_failed",
    "parent_run",
    "prepare_store",
    "qualifying",
    "register_best",
    "register_model",
    "reopen_run",
    "requirements",
    "retrying",
    "run_status",
    "start_child_run",
    "start_parent_run",
    "tag_run",
    "ui_link",
    "warm",
]
