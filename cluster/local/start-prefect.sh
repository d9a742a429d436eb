#!/usr/bin/env bash
# Start the Prefect server (API and UI); the flow process and every worker use its API.
#   cluster/local/start-prefect.sh
# Settings: BIND_HOST PREFECT_PORT PREFECT_HOME PREFECT_DB_URL (postgresql+asyncpg://...)
#           TAXI_HPO_RUN_DIR.
set -euo pipefail
source "$(dirname "$0")/common.sh"

[ -z "$PREFECT_DB_URL" ] || export PREFECT_SERVER_DATABASE_CONNECTION_URL="$PREFECT_DB_URL"
# The UI in a browser elsewhere must call the API by a name it can resolve, not 0.0.0.0.
export PREFECT_UI_API_URL="${PREFECT_UI_API_URL:-http://$(public_host):$PREFECT_PORT/api}"
mkdir -p "$PREFECT_HOME"
start_daemon prefect prefect server start --host "$BIND_HOST" --port "$PREFECT_PORT"
wait_port prefect "$BIND_HOST" "$PREFECT_PORT"
echo "prefect: export PREFECT_API_URL=http://$(public_host):$PREFECT_PORT/api"
