"""MLflow, imported once with its noise turned down and its HTTP retries ours to decide."""

import logging
import os
import warnings

with warnings.catch_warnings():
    # mlflow warns at import time about features we do not use: noise for users.
    warnings.simplefilter("ignore")
    import mlflow
    import mlflow.pyfunc
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

__all__ = ["Metric", "MlflowClient", "MlflowException", "Param", "RunTag", "mlflow"]

# mlflow configures its loggers at import (INFO): schema-migration chatter is noise for users.
logging.getLogger("mlflow").setLevel(os.environ.get("MLFLOW_LOGGING_LEVEL", "WARNING").upper())
logging.getLogger("alembic").setLevel(logging.WARNING)
# Registration downloads two small artifacts; three tqdm bars for them are noise on the terminal.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# Fail fast on an unreachable server instead of MLflow's default minutes of HTTP retries;
# our own retry (below) decides how long a trial waits for the store.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
# ... and that one HTTP retry's warning ("Retrying (Retry(total=0 ...)) after connection broken")
# for each request while the server is away: our retry waits, and says so if it gives up.
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
# MLflow's usage telemetry sets and unsets a variable in os.environ from its own thread; another
# thread reading the environment then failed one trial's log_batch with a KeyError (seen once in
# 1,000 runs, docs/scaling.md). A search has no use for it: off unless the user turns it on.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
