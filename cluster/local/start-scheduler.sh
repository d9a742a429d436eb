#!/usr/bin/env bash
# Start the Dask scheduler on this host (tls:// when TLS_DIR is set).
#   cluster/local/start-scheduler.sh
# Settings: BIND_HOST SCHEDULER_PORT DASHBOARD_PORT TLS_DIR ALLOW_PLAINTEXT TAXI_HPO_RUN_DIR (see common.sh).
# Beyond loopback it needs TLS_DIR (cluster/tls/make-certs.sh), or ALLOW_PLAINTEXT=1 to run plain TCP.
set -euo pipefail
source "$(dirname "$0")/common.sh"

refuse_plaintext "the scheduler on $BIND_HOST:$SCHEDULER_PORT" "$BIND_HOST"
scheme=$(tls_scheme)
flags=$(tls_flags scheduler)
# shellcheck disable=SC2086  # $flags is a list of words
start_daemon scheduler dask scheduler --host "$BIND_HOST" --port "$SCHEDULER_PORT" --protocol "$scheme" \
    --dashboard-address "$BIND_HOST:$DASHBOARD_PORT" $flags
wait_port scheduler "$BIND_HOST" "$SCHEDULER_PORT"
echo "scheduler: $scheme://$(public_host):$SCHEDULER_PORT (dashboard http://$(public_host):$DASHBOARD_PORT)"
