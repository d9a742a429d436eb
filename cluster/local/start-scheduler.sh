#!/usr/bin/env bash
# Start the Dask scheduler on this host (tls:// when TLS_DIR is set).
#   cluster/local/start-scheduler.sh
# Settings: BIND_HOST SCHEDULER_PORT DASHBOARD_PORT TLS_DIR TAXI_HPO_RUN_DIR (see common.sh).
set -euo pipefail
source "$(dirname "$0")/common.sh"

scheme=$(tls_scheme)
flags=$(tls_flags scheduler)
# shellcheck disable=SC2086  # $flags is a list of words
start_daemon scheduler dask scheduler --host "$BIND_HOST" --port "$SCHEDULER_PORT" --protocol "$scheme" \
    --dashboard-address "$BIND_HOST:$DASHBOARD_PORT" $flags
wait_port scheduler "$BIND_HOST" "$SCHEDULER_PORT"
echo "scheduler: $scheme://$(public_host):$SCHEDULER_PORT (dashboard http://$(public_host):$DASHBOARD_PORT)"
