#!/usr/bin/env bash
# List this host's services from their pid files: running or gone.
#   cluster/local/status.sh
set -uo pipefail
source "$(dirname "$0")/common.sh"

shopt -s nullglob
for pidfile in "$TAXI_HPO_RUN_DIR"/*.pid; do
    name=$(basename "$pidfile" .pid)
    if pid_alive "$pidfile"; then state=running; else state=gone; fi
    printf '%-12s %-8s pid %-8s log %s\n' "$name" "$state" "$(cat "$pidfile")" "$TAXI_HPO_RUN_DIR/$name.log"
done
