"""Names in the store: the registered model, tags, artifact paths."""

MODEL_NAME = "nyc-taxi-duration"
ALIAS = "staging"
PREPROCESSOR_TAG = "preprocessor_sha256"
PREPROCESSOR_DIR = "preprocessor"
PREPROCESSOR_FILE = "preprocessor.pkl"
TRIAL_TAG = "trial_id"
# MLflow 3's UI opens an experiment without this tag on its GenAI overview (traces, "No data
# available"); with it, on the runs table of model training.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
PRUNED_TAG = "pruned_at_round"  # set on a pruned trial's run: the checkpoint round it stopped at
CURVE_TAG = "checkpoint_rmse"  # JSON {round: validation RMSE} at the checkpoints a trial reached
# On a multi-fidelity search's trial run: JSON of what it fitted (search.multifidelity's fidelity:
# rung, rows, rounds, config, promoted_from, complete), and the rung and promotion readable alone
FIDELITY_TAG = "fidelity"
RUNG_TAG = "fidelity_rung"
PROMOTED_FROM_TAG = "promoted_from_trial"
WARM_TAG = "warm_start"  # on a search: JSON [{"from": "PARENT:TRIAL", "params": {...}}, ...]
WARM_FROM_TAG = "warm_start_from"  # on a warm trial's run: the search and trial its point came from
FAILED_TAG_PREFIX = "trial_failed."
BOOSTER_DIR = "model"  # a trial's booster, under its run's artifacts
BOOSTER_FILE = "booster.ubj"
