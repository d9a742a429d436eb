#!/usr/bin/env bash
# Start the MLflow tracking server; artifacts are served through it (mlflow-artifacts:/), so
# workers need only its http:// URI.
#   cluster/local/start-mlflow.sh
# Settings: BIND_HOST MLFLOW_PORT MLFLOW_BACKEND_URI (sqlite:/// or postgresql://)
#           MLFLOW_ARTIFACTS MLFLOW_WORKERS MLFLOW_ALLOWED_HOSTS TAXI_HPO_RUN_DIR.
set -euo pipefail
source "$(dirname "$0")/common.sh"

# Server-side jobs (GenAI evaluation) are unused here; off, the server runs 8 fewer processes.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
case "$MLFLOW_ARTIFACTS" in *://*) ;; *) mkdir -p "$MLFLOW_ARTIFACTS" ;; esac
start_daemon mlflow mlflow server --host "$BIND_HOST" --port "$MLFLOW_PORT" \
    --backend-store-uri "$MLFLOW_BACKEND_URI" --artifacts-destination "$MLFLOW_ARTIFACTS" \
    --workers "${MLFLOW_WORKERS:-2}" ${MLFLOW_ALLOWED_HOSTS:+--allowed-hosts "$MLFLOW_ALLOWED_HOSTS"}
wait_port mlflow "$BIND_HOST" "$MLFLOW_PORT"
echo "mlflow: --tracking-uri http://$(public_host):$MLFLOW_PORT"
