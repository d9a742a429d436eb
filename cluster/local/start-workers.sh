#!/usr/bin/env bash
# Start N Dask worker processes on this host, attached to a scheduler.
#   cluster/local/start-workers.sh tcp://SCHEDULER_HOST:8786 [N]
# Each process runs SLOTS_PER_WORKER trials at once, each with THREADS_PER_TRIAL XGBoost
# threads: give taxi-hpo run the same --threads-per-worker. Several groups on one host need
# distinct WORKER_GROUP names (default: workers; the log and pid file are named after it).
# Workers listen on the address that reaches the scheduler (or WORKER_HOST): beyond loopback they
# need tls:// and TLS_DIR, or ALLOW_PLAINTEXT=1 to run plain TCP.
set -euo pipefail
source "$(dirname "$0")/common.sh"

address=${1:?usage: $0 SCHEDULER_ADDRESS [N]}
n=${2:-1}
group=${WORKER_GROUP:-workers}
case "$address" in
    tls://*) [ -n "$TLS_DIR" ] || die "$address is tls://: set TLS_DIR to the folder of cluster/tls/make-certs.sh" ;;
    *) [ -z "$TLS_DIR" ] || die "TLS_DIR is set but $address is not tls://: give tls://HOST:$SCHEDULER_PORT" ;;
esac
scheduler_host=${address#*://}
scheduler_host=${scheduler_host%:*}
refuse_plaintext "the workers of $address" "${WORKER_HOST:-$scheduler_host}"
flags=$(tls_flags worker)
export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON="$THREAD_ENVIRON"
from=$(log_lines "$group")
# shellcheck disable=SC2086
start_daemon "$group" dask worker "$address" --nworkers "$n" --nthreads "$SLOTS_PER_WORKER" \
    --memory-limit "$WORKER_MEMORY" --name "$(hostname)-$group" ${WORKER_HOST:+--host "$WORKER_HOST"} $flags
wait_log "$group" "Registered to:" "$n" "$from"
echo "$group: $n worker(s) x $SLOTS_PER_WORKER slot(s), OMP_NUM_THREADS=$THREADS_PER_TRIAL, registered to $address"
