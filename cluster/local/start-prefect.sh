#!/usr/bin/env bash
# Start the Prefect server (API and UI); the flow process and every worker use its API.
#   cluster/local/start-prefect.sh
# Settings: BIND_HOST PREFECT_PORT PREFECT_HOME PREFECT_DB_URL (postgresql+asyncpg://...)
#           TAXI_HPO_RUN_DIR.
# Beyond loopback (BIND_HOST not 127.0.0.1) the API asks for an auth string: from
# PREFECT_SERVER_API_AUTH_STRING or PREFECT_API_AUTH_STRING, else from (or made into)
# $TAXI_HPO_RUN_DIR/prefect-auth.env (mode 0600), which clients source (the UI asks for it too).
# ALLOW_NO_AUTH=1: no credentials.
set -euo pipefail
source "$(dirname "$0")/common.sh"

[ -z "$PREFECT_DB_URL" ] || export PREFECT_SERVER_DATABASE_CONNECTION_URL="$PREFECT_DB_URL"
# The UI in a browser elsewhere must call the API by a name it can resolve, not 0.0.0.0.
export PREFECT_UI_API_URL="${PREFECT_UI_API_URL:-http://$(public_host):$PREFECT_PORT/api}"
auth_file="$TAXI_HPO_RUN_DIR/prefect-auth.env"
auth=
if needs_auth Prefect; then
    auth=${PREFECT_SERVER_API_AUTH_STRING:-${PREFECT_API_AUTH_STRING:-$(read_secret "$auth_file" PREFECT_API_AUTH_STRING)}}
    auth=${auth:-taxi-hpo:$(random_secret)}
    write_secrets "$auth_file" "PREFECT_API_AUTH_STRING=$auth"
    export PREFECT_SERVER_API_AUTH_STRING="$auth"   # in the server's environment, not its command line
fi
mkdir -p "$PREFECT_HOME"
start_daemon prefect prefect server start --host "$BIND_HOST" --port "$PREFECT_PORT"
wait_port prefect "$BIND_HOST" "$PREFECT_PORT"
echo "prefect: export PREFECT_API_URL=http://$(public_host):$PREFECT_PORT/api"
[ -z "$auth" ] || echo "prefect: the API asks for PREFECT_API_AUTH_STRING; on each client: source $auth_file (a copy, mode 0600)"
