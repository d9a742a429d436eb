#!/usr/bin/env bash
# Start the MLflow tracking server; artifacts are served through it (mlflow-artifacts:/), so
# workers need only its http:// URI.
#   cluster/local/start-mlflow.sh
# Settings: BIND_HOST MLFLOW_PORT MLFLOW_BACKEND_URI (sqlite:/// or postgresql://)
#           MLFLOW_ARTIFACTS MLFLOW_WORKERS MLFLOW_ALLOWED_HOSTS TAXI_HPO_RUN_DIR.
# Beyond loopback (BIND_HOST not 127.0.0.1) it runs MLflow's basic-auth app: user and password
# from MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD, else from (or made into)
# $TAXI_HPO_RUN_DIR/mlflow-auth.env (mode 0600), which clients source; its user store is
# MLFLOW_AUTH_DB_URI (default sqlite in the run dir). ALLOW_NO_AUTH=1: no credentials.
# A credential checked once is trusted for MLFLOW_AUTH_CACHE_TTL_S seconds (default 60; 0: every
# request): MLflow checks each request's password with scrypt, ~0.1 CPU-s, and a search makes
# hundreds of requests (an 8-trial search of tiny trials: 38 s against 9.7 s without auth). A
# password changed through the server's API takes effect at once; out of band, within the TTL.
set -euo pipefail
source "$(dirname "$0")/common.sh"

# Server-side jobs (GenAI evaluation) are unused here; off, the server runs 8 fewer processes.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
case "$MLFLOW_ARTIFACTS" in *://*) ;; *) mkdir -p "$MLFLOW_ARTIFACTS" ;; esac
auth_file="$TAXI_HPO_RUN_DIR/mlflow-auth.env"
app=()
if needs_auth MLflow; then
    user=${MLFLOW_TRACKING_USERNAME:-$(read_secret "$auth_file" MLFLOW_TRACKING_USERNAME)}
    user=${user:-admin}
    given="the password in MLFLOW_TRACKING_PASSWORD"
    password=${MLFLOW_TRACKING_PASSWORD:-}
    [ -n "$password" ] || { given="the password in $auth_file"; password=$(read_secret "$auth_file" MLFLOW_TRACKING_PASSWORD); }
    [ -n "$password" ] || { given="a new random password"; password=$(random_secret); }
    # The server's own key (CSRF of its sign-up page), kept across restarts; never for clients.
    key_file="$TAXI_HPO_RUN_DIR/mlflow-server.env"
    key=${MLFLOW_FLASK_SERVER_SECRET_KEY:-$(read_secret "$key_file" MLFLOW_FLASK_SERVER_SECRET_KEY)}
    key=${key:-$(random_secret)}
    write_secrets "$key_file" "MLFLOW_FLASK_SERVER_SECRET_KEY=$key"
    printf '%s\n' "[mlflow]" "default_permission = READ" \
        "database_uri = ${MLFLOW_AUTH_DB_URI:-sqlite:///$TAXI_HPO_RUN_DIR/mlflow-auth.db}" \
        "admin_username = $user" "authorization_function = mlflow.server.auth:authenticate_request_basic_auth" \
        "auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_S:-60}" \
        >"$TAXI_HPO_RUN_DIR/mlflow-auth.ini"
    # In the server's environment, not on its command line. The password creates the admin user
    # the first time; afterwards the user store keeps the one it has (checked below).
    export MLFLOW_AUTH_CONFIG_PATH="$TAXI_HPO_RUN_DIR/mlflow-auth.ini" MLFLOW_AUTH_ADMIN_USERNAME="$user" \
        MLFLOW_AUTH_ADMIN_PASSWORD="$password" MLFLOW_FLASK_SERVER_SECRET_KEY="$key"
    app=(--app-name basic-auth)
fi
# MLflow answers only requests whose Host header it allows (default: localhost and private
# addresses, MLflow's list below); the name this script gives clients is added to them, so the
# printed --tracking-uri works. MLFLOW_ALLOWED_HOSTS replaces the whole list.
if [ -z "${MLFLOW_ALLOWED_HOSTS:-}" ]; then
    MLFLOW_ALLOWED_HOSTS="localhost,localhost:*,127.0.0.1,127.0.0.1:*,[::1],[[]::1]:*,0.0.0.0,0.0.0.0:*,10.*,192.168.*,fc00:*,fd00:*"
    for i in $(seq 16 31); do MLFLOW_ALLOWED_HOSTS+=",172.$i.*"; done
    for name in "$(public_host)" "$(hostname)"; do MLFLOW_ALLOWED_HOSTS+=",$name,$name:$MLFLOW_PORT"; done
fi
start_daemon mlflow mlflow server --host "$BIND_HOST" --port "$MLFLOW_PORT" \
    --backend-store-uri "$MLFLOW_BACKEND_URI" --artifacts-destination "$MLFLOW_ARTIFACTS" \
    --workers "${MLFLOW_WORKERS:-2}" ${MLFLOW_ALLOWED_HOSTS:+--allowed-hosts "$MLFLOW_ALLOWED_HOSTS"} ${app[@]+"${app[@]}"}
wait_port mlflow "$BIND_HOST" "$MLFLOW_PORT"
echo "mlflow: --tracking-uri http://$(public_host):$MLFLOW_PORT"
if [ ${#app[@]} -gt 0 ]; then
    # The user store may hold this user with another password (an earlier start): say so, and
    # keep the credentials file as it was.
    host=$BIND_HOST
    [ "$host" != 0.0.0.0 ] || host=127.0.0.1
    header="Basic $(printf '%s:%s' "$user" "$password" | base64 -w0)"
    code=000
    for _ in $(seq $((WAIT_S * 2))); do
        code=$(http_status "$host" "$MLFLOW_PORT" "/api/2.0/mlflow/experiments/search?max_results=1" "$header")
        [ "$code" = 000 ] || break
        sleep 0.5
    done
    if [ "$code" = 401 ]; then
        "$(dirname "$0")/stop.sh" mlflow >/dev/null
        die "the MLflow server refused user $user with $given: its user store (${MLFLOW_AUTH_DB_URI:-$TAXI_HPO_RUN_DIR/mlflow-auth.db}) has another one; set MLFLOW_TRACKING_PASSWORD to that one, or delete the user store; server stopped"
    fi
    write_secrets "$auth_file" "MLFLOW_TRACKING_USERNAME=$user" "MLFLOW_TRACKING_PASSWORD=$password"
    echo "mlflow: basic auth, user $user; on each client: source $auth_file (a copy, mode 0600)"
fi
