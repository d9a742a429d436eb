#!/usr/bin/env bash
# Everything on this one host: Prefect, MLflow, the scheduler and N workers.
#   cluster/local/start-all.sh [N]
# For several hosts, run start-prefect.sh, start-mlflow.sh and start-scheduler.sh on one and
# start-workers.sh on each of the others (see cluster/README.md).
# Beyond loopback (the default BIND_HOST=0.0.0.0) Dask speaks TLS: without TLS_DIR (or
# ALLOW_PLAINTEXT=1) the certificates are made in $TAXI_HPO_RUN_DIR/tls the first time; MLflow
# and Prefect ask for credentials (see start-mlflow.sh, start-prefect.sh).
set -euo pipefail
here=$(dirname "$0")
source "$here/common.sh"

n=${1:-2}
if [ -z "$TLS_DIR" ] && [ "$ALLOW_PLAINTEXT" != 1 ] && ! is_loopback "$BIND_HOST"; then
    export TLS_DIR="$TAXI_HPO_RUN_DIR/tls"
    if [ ! -r "$TLS_DIR/ca.pem" ]; then
        names=("$(hostname)")
        [ "$(public_host)" = "$(hostname)" ] || names+=("$(public_host)")
        "$here/../tls/make-certs.sh" "$TLS_DIR" "${names[@]}"
    fi
fi
"$here/start-prefect.sh" & prefect=$!
"$here/start-mlflow.sh" & mlflow=$!
"$here/start-scheduler.sh"
# Workers on this host reach the scheduler on loopback when it listens everywhere.
local_host=$BIND_HOST
[ "$local_host" != 0.0.0.0 ] || local_host=127.0.0.1
"$here/start-workers.sh" "$(tls_scheme)://$local_host:$SCHEDULER_PORT" "$n"
wait "$prefect" || die "the Prefect server did not start: see $TAXI_HPO_RUN_DIR/prefect.log"
wait "$mlflow" || die "the MLflow server did not start: see $TAXI_HPO_RUN_DIR/mlflow.log"
host=$(public_host)
echo
[ -z "$TLS_DIR" ] || echo "export DASK_CONFIG=$TLS_DIR/client.yaml"
for f in mlflow-auth.env prefect-auth.env; do
    [ ! -f "$TAXI_HPO_RUN_DIR/$f" ] || is_loopback "$BIND_HOST" || [ "$ALLOW_NO_AUTH" = 1 ] || echo "source $TAXI_HPO_RUN_DIR/$f"
done
cat <<MSG
export PREFECT_API_URL=http://$host:$PREFECT_PORT/api
taxi-hpo run --address $(tls_scheme)://$host:$SCHEDULER_PORT --tracking-uri http://$host:$MLFLOW_PORT \\
    --threads-per-worker $THREADS_PER_TRIAL
stop with: cluster/local/stop.sh   (logs and pid files in $TAXI_HPO_RUN_DIR)
MSG
