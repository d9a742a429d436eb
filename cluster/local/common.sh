# Shared settings and helpers of the cluster/local scripts; sourced, never run.
#
# Every setting is an environment variable with a default here, so one host or several are
# configured the same way (export them, or put them in a file and `source` it first).
# Each service writes $TAXI_HPO_RUN_DIR/<name>.log and <name>.pid.

: "${TAXI_HPO_RUN_DIR:=$PWD/cluster-run}"     # logs and pid files of this host's services
: "${BIND_HOST:=0.0.0.0}"                      # where servers listen
: "${SCHEDULER_PORT:=8786}"
: "${DASHBOARD_PORT:=8787}"
: "${MLFLOW_PORT:=5000}"
: "${PREFECT_PORT:=4200}"
: "${THREADS_PER_TRIAL:=1}"                    # = taxi-hpo run --threads-per-worker
: "${SLOTS_PER_WORKER:=1}"                     # trials one worker process runs at once
: "${WORKER_MEMORY:=auto}"
: "${WORKER_HOST:=}"                           # address workers advertise (default: picked by dask)
: "${MLFLOW_BACKEND_URI:=sqlite:///$TAXI_HPO_RUN_DIR/mlflow.db}"   # or postgresql://user:pw@host/db
: "${MLFLOW_ARTIFACTS:=$TAXI_HPO_RUN_DIR/mlartifacts}"            # or s3://bucket/path
: "${PREFECT_DB_URL:=}"                        # empty: sqlite under PREFECT_HOME; or postgresql+asyncpg://...
: "${PREFECT_HOME:=$TAXI_HPO_RUN_DIR/prefect}"
: "${TLS_DIR:=}"                               # folder made by cluster/tls/make-certs.sh: enables tls://
: "${ALLOW_PLAINTEXT:=}"                       # 1: Dask over plain TCP beyond loopback (anyone who reaches it runs code)
: "${ALLOW_NO_AUTH:=}"                         # 1: MLflow and Prefect beyond loopback without credentials
: "${WAIT_S:=90}"                              # how long a start script waits for its service; 0: do not wait
: "${FOREGROUND:=}"                            # 1: the script becomes its service (containers: no log, pid file or wait)
export PREFECT_HOME
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"

# XGBoost caps its threads at OMP_NUM_THREADS, which the nanny sets to 1 in every worker
# process unless distributed.nanny.pre-spawn-environ says otherwise.
THREAD_ENVIRON="{'OMP_NUM_THREADS': $THREADS_PER_TRIAL, 'MKL_NUM_THREADS': $THREADS_PER_TRIAL, 'OPENBLAS_NUM_THREADS': $THREADS_PER_TRIAL}"

# Dask's own periodic work, turned down for a search (taxi_hpo.cluster.spec.QUIET_DASK says why: two
# workers fitting the same trials spent 8 % longer in XGBoost with Dask's defaults). Exported,
# so the scheduler and every worker started from these scripts read them; override any of them.
export DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL="${DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL:-1s}"
export DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL="${DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL:-2s}"
export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED="${DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED:-False}"
export DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING="${DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING:-False}"
export DASK_DISTRIBUTED__WORKER__MEMORY__MONITOR_INTERVAL="${DASK_DISTRIBUTED__WORKER__MEMORY__MONITOR_INTERVAL:-1s}"

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

tls_scheme() { if [ -n "$TLS_DIR" ]; then echo tls; else echo tcp; fi; }

# is_loopback HOST: true for names and addresses that only this machine can reach.
is_loopback() { case "$1" in 127.* | localhost | ::1 | "[::1]") return 0 ;; *) return 1 ;; esac; }

# refuse_plaintext WHAT HOST: Dask listening on HOST beyond loopback speaks TLS, unless
# ALLOW_PLAINTEXT=1 says otherwise: a Dask scheduler or worker runs whatever pickle it is sent.
refuse_plaintext() {
    [ -z "$TLS_DIR" ] || return 0
    is_loopback "$2" && return 0
    local risk="anyone who can reach the port can run code on every worker (Dask runs the pickles it is sent)"
    if [ "$ALLOW_PLAINTEXT" = 1 ]; then
        echo "$(basename "$0"): warning: plain TCP beyond loopback for $1 (ALLOW_PLAINTEXT=1): $risk" >&2
        return 0
    fi
    die "refusing plain TCP beyond loopback for $1: $risk; use TLS (cluster/tls/make-certs.sh DIR HOST, then TLS_DIR=DIR), stay on 127.0.0.1, or set ALLOW_PLAINTEXT=1 to accept that risk"
}

# needs_auth NAME: true when NAME listens beyond loopback and ALLOW_NO_AUTH is not 1.
needs_auth() {
    is_loopback "$BIND_HOST" && return 1
    if [ "$ALLOW_NO_AUTH" = 1 ]; then
        echo "$(basename "$0"): warning: $1 on $BIND_HOST without credentials (ALLOW_NO_AUTH=1): anyone who can reach it can read and write it" >&2
        return 1
    fi
    return 0
}

random_secret() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }

# read_secret FILE NAME: the value FILE (made by write_secrets) exports as NAME, or nothing.
read_secret() { [ -r "$1" ] || return 0; ( . "$1" && printf '%s' "${!2:-}" ); }

# write_secrets FILE NAME=VALUE...: a file of `export NAME='VALUE'` lines, readable by its owner only.
write_secrets() {
    local file=$1 pair value; shift
    mkdir -p "$(dirname "$file")"
    ( umask 077
      { echo "# Credentials made by cluster/local; on the client: source $file"
        for pair in "$@"; do
            value=${pair#*=}
            printf "export %s='%s'\n" "${pair%%=*}" "${value//\'/\'\\\'\'}"
        done; } >"$file.tmp" )
    chmod 600 "$file.tmp" && mv -f "$file.tmp" "$file"
}

# http_status HOST PORT PATH [AUTHORIZATION]: the HTTP status of a GET, 000 if none.
http_status() {
    ( exec 3<>"/dev/tcp/$1/$2" || exit 0
      auth=""; [ -z "${4:-}" ] || auth="Authorization: $4"$'\r\n'
      printf 'GET %s HTTP/1.0\r\nHost: %s:%s\r\n%s\r\n' "$3" "$1" "$2" "$auth" >&3
      IFS=' ' read -r -t 20 _ code _ <&3 && echo "$code" ) 2>/dev/null | grep -E '^[0-9]{3}$' || echo 000
}

tls_flags() {  # tls_flags ROLE: the dask CLI flags of ROLE's certificate, or nothing
    [ -n "$TLS_DIR" ] || return 0
    for f in ca.pem "$1.pem" "$1-key.pem"; do
        [ -r "$TLS_DIR/$f" ] || die "$TLS_DIR/$f is missing: make it with cluster/tls/make-certs.sh $TLS_DIR"
    done
    echo "--tls-ca-file $TLS_DIR/ca.pem --tls-cert $TLS_DIR/$1.pem --tls-key $TLS_DIR/$1-key.pem"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# start_daemon NAME CMD...: run CMD in its own session (so stop.sh ends its whole process
# group), output to NAME.log, its pid in NAME.pid; with FOREGROUND=1, exec CMD in place.
start_daemon() {
    local name=$1; shift
    # FOREGROUND=1 (a container's entrypoint, cluster/compose/entrypoint.sh): become the service.
    if [ "${FOREGROUND:-}" = 1 ]; then echo "$name: $*"; exec "$@"; fi
    mkdir -p "$TAXI_HPO_RUN_DIR"
    local pidfile="$TAXI_HPO_RUN_DIR/$name.pid" log="$TAXI_HPO_RUN_DIR/$name.log"
    if pid_alive "$pidfile"; then
        die "$name is already running (pid $(cat "$pidfile")): stop it with cluster/local/stop.sh $name"
    fi
    echo "[$(date -u +%FT%TZ)] $*" >>"$log"
    # A background child of a non-interactive shell is no group leader, so setsid makes the
    # new session in place and $! is its leader.
    setsid "$@" >>"$log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    echo "$name: pid $!, log $log"
}

# wait_port NAME HOST PORT: until HOST:PORT accepts connections, NAME's process dies, or WAIT_S.
wait_port() {
    local name=$1 host=$2 port=$3 waited=0
    [ "$WAIT_S" -gt 0 ] || return 0
    [ "$host" = 0.0.0.0 ] && host=127.0.0.1
    while ! (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; do
        pid_alive "$TAXI_HPO_RUN_DIR/$name.pid" || {
            tail -n 20 "$TAXI_HPO_RUN_DIR/$name.log" >&2; die "$name exited: see $TAXI_HPO_RUN_DIR/$name.log"; }
        [ "$waited" -lt $((WAIT_S * 5)) ] || die "$name is not listening on $host:$port after $WAIT_S s: see $TAXI_HPO_RUN_DIR/$name.log"
        sleep 0.2
        waited=$((waited + 1))
    done
    echo "$name: listening on $host:$port"
}

# wait_log NAME PATTERN COUNT FROM_LINE: until NAME.log has COUNT lines matching PATTERN after
# line FROM_LINE, NAME's process dies, or WAIT_S.
wait_log() {
    local name=$1 pattern=$2 count=$3 from=$4 waited=0 log="$TAXI_HPO_RUN_DIR/$1.log"
    [ "$WAIT_S" -gt 0 ] || return 0
    while [ "$(tail -n +"$((from + 1))" "$log" | grep -c -- "$pattern")" -lt "$count" ]; do
        pid_alive "$TAXI_HPO_RUN_DIR/$name.pid" || {
            tail -n 20 "$log" >&2; die "$name exited: see $log"; }
        [ "$waited" -lt $((WAIT_S * 5)) ] || die "$name: '$pattern' seen fewer than $count times after $WAIT_S s: see $log"
        sleep 0.2
        waited=$((waited + 1))
    done
}

log_lines() { if [ -f "$TAXI_HPO_RUN_DIR/$1.log" ]; then wc -l <"$TAXI_HPO_RUN_DIR/$1.log"; else echo 0; fi; }

# public_host: how clients elsewhere name this host: BIND_HOST, or for 0.0.0.0 the host name when it
# resolves, else the first address of `hostname -I`.
public_host() {
    [ "$BIND_HOST" = 0.0.0.0 ] || { echo "$BIND_HOST"; return; }
    local name addr
    name=$(hostname)
    if getent hosts "$name" >/dev/null 2>&1; then echo "$name"; return; fi
    addr=$(hostname -I 2>/dev/null | awk '{print $1}')
    echo "${addr:-$name}"
}
