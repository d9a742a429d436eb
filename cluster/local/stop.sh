#!/usr/bin/env bash
# Stop this host's services by their pid files: all of them, or the ones named.
#   cluster/local/stop.sh [scheduler|workers|mlflow|prefect|WORKER_GROUP ...]
# Each service is its own process group: TERM to the group, KILL after STOP_WAIT_S (15).
set -uo pipefail
source "$(dirname "$0")/common.sh"

stop_one() {
    local name=$1 pidfile="$TAXI_HPO_RUN_DIR/$1.pid" pid waited=0
    [ -f "$pidfile" ] || { echo "$name: no pid file in $TAXI_HPO_RUN_DIR"; return 0; }
    pid=$(cat "$pidfile")
    kill -TERM -- "-$pid" 2>/dev/null
    while kill -0 -- "-$pid" 2>/dev/null && [ "$waited" -lt $((${STOP_WAIT_S:-15} * 5)) ]; do
        sleep 0.2
        waited=$((waited + 1))
    done
    if kill -0 -- "-$pid" 2>/dev/null; then
        kill -KILL -- "-$pid" 2>/dev/null
        echo "$name: killed (pid $pid)"
    else
        echo "$name: stopped (pid $pid)"
    fi
    rm -f "$pidfile"
}

if [ $# -eq 0 ]; then
    # Worker groups first: they would otherwise keep calling a stopped scheduler.
    shopt -s nullglob
    groups=() servers=()
    for pidfile in "$TAXI_HPO_RUN_DIR"/*.pid; do
        name=$(basename "$pidfile" .pid)
        case "$name" in scheduler | mlflow | prefect) servers+=("$name") ;; *) groups+=("$name") ;; esac
    done
    set -- "${groups[@]}" "${servers[@]}"
fi
for name in "$@"; do stop_one "$name"; done
