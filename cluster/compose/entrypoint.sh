#!/usr/bin/env bash
# The entrypoint of the taxi-hpo image: each compose service is one role, run by the same
# cluster/local script a host would run (FOREGROUND=1: the script becomes the service), so the
# containers are closed by default as cluster/local is, with the same opt-outs:
#   secrets    once, before the others: a CA and the scheduler/worker/client certificates
#              (cluster/tls/make-certs.sh; in $SECRETS_TLS_DIR, default $SECRETS_DIR/tls) and the
#              MLflow and Prefect credentials, in $SECRETS_DIR (default /secrets, a volume). The
#              CA's key is not kept. Kept across restarts; delete the volume to make new ones.
#              (cluster/kubernetes/make-secrets.sh runs this role on the admin's machine.)
#   scheduler  start-scheduler.sh: tls:// with the scheduler's certificate
#   worker     start-workers.sh tls://$SCHEDULER_HOST:$SCHEDULER_PORT $WORKERS_PER_CONTAINER
#   mlflow     start-mlflow.sh: MLflow's basic-auth app, the admin's password from the secrets
#   prefect    start-prefect.sh: the API asks for the auth string from the secrets
#   client     CMD... with the client's certificate (DASK_CONFIG) and both credentials set
# ALLOW_PLAINTEXT=1: Dask over plain TCP; ALLOW_NO_AUTH=1: both servers without credentials
# (give them to every service: docker-compose.yml passes them from the environment or `.env`).
set -euo pipefail
cluster=$(cd "$(dirname "$0")/.." && pwd)
# A first word that is no role is the client's command (`docker compose run client taxi-hpo ...`).
case "${1:-client}" in
    secrets | scheduler | worker | mlflow | prefect | client) role=${1:-client}; shift || true ;;
    *) role=client ;;
esac
secrets=${SECRETS_DIR:-/secrets}
tls_dir=${SECRETS_TLS_DIR:-$secrets/tls}   # Kubernetes: a Secret of its own (make-secrets.sh)
export TAXI_HPO_RUN_DIR=${TAXI_HPO_RUN_DIR:-$HOME/run}
mkdir -p "$TAXI_HPO_RUN_DIR"
say() { echo "entrypoint.sh $role: $*" >&2; }

if [ "$role" = secrets ]; then
    umask 077
    if [ "${ALLOW_PLAINTEXT:-}" != 1 ] && [ ! -r "$tls_dir/ca.pem" ]; then
        "$cluster/tls/make-certs.sh" "$tls_dir" scheduler ${CERT_NAMES:-}
        rm -f "$tls_dir/ca-key.pem"   # no new certificates are made from here
    fi
    source "$cluster/local/common.sh"
    if [ "${ALLOW_NO_AUTH:-}" != 1 ]; then
        [ -r "$secrets/mlflow-auth.env" ] || write_secrets "$secrets/mlflow-auth.env" \
            "MLFLOW_TRACKING_USERNAME=${MLFLOW_TRACKING_USERNAME:-admin}" \
            "MLFLOW_TRACKING_PASSWORD=${MLFLOW_TRACKING_PASSWORD:-$(random_secret)}"
        [ -r "$secrets/prefect-auth.env" ] || write_secrets "$secrets/prefect-auth.env" \
            "PREFECT_API_AUTH_STRING=${PREFECT_API_AUTH_STRING:-taxi-hpo:$(random_secret)}"
    fi
    touch "$secrets/ready"
    say "certificates and credentials in $secrets (on the host: the volume's files, mode 0600)"
    exit 0
fi

# The other roles wait for the secrets service (compose engines differ in honouring
# `condition: service_completed_successfully`).
for _ in $(seq 600); do [ -e "$secrets/ready" ] && break; sleep 0.1; done
[ -e "$secrets/ready" ] || { say "no $secrets/ready after 60 s: is the secrets service done?"; exit 1; }
for f in mlflow-auth.env prefect-auth.env; do
    # shellcheck disable=SC1090
    if [ "${ALLOW_NO_AUTH:-}" != 1 ] && [ -r "$secrets/$f" ]; then source "$secrets/$f"; fi
done
if [ "${ALLOW_PLAINTEXT:-}" != 1 ]; then export TLS_DIR=$tls_dir; fi
source "$cluster/local/common.sh"
export FOREGROUND=1

case "$role" in
    scheduler) exec "$cluster/local/start-scheduler.sh" ;;
    worker) exec "$cluster/local/start-workers.sh" \
        "$(tls_scheme)://${SCHEDULER_HOST:-scheduler}:$SCHEDULER_PORT" "${WORKERS_PER_CONTAINER:-1}" ;;
    mlflow) exec "$cluster/local/start-mlflow.sh" ;;
    prefect) exec "$cluster/local/start-prefect.sh" ;;
    client)
        [ -z "${TLS_DIR:-}" ] || export DASK_CONFIG=$TLS_DIR/client.yaml
        [ $# -gt 0 ] || set -- taxi-hpo --help
        exec "$@" ;;
esac
