# Shared by the benchmark scripts (sourced, not run): logging, background processes that
# are always cleaned up, and waiting for a server to answer. The caller sets TMP, PIDS,
# READY_TIMEOUT_S and STOP_TIMEOUT_S and installs `cleanup` as its EXIT trap.

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# --- processes ------------------------------------------------------------------------------

# start_bg LOGFILE CMD...: start CMD in the background, remember its pid in STARTED_PID.
start_bg() {
    local logfile=$1
    shift
    "$@" >"$logfile" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}

# stop_pid PID: SIGTERM, wait (bounded), then SIGKILL; reaps it and forgets it.
stop_pid() {
    local pid=$1 i keep=()
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < STOP_TIMEOUT_S * 10; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid did not stop in ${STOP_TIMEOUT_S}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    for i in ${PIDS[@]+"${PIDS[@]}"}; do
        [[ $i == "$pid" ]] || keep+=("$i")
    done
    PIDS=(${keep[@]+"${keep[@]}"})
}

cleanup() {
    local status=$? pid
    trap - EXIT INT TERM
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        stop_pid "$pid"
    done
    if [[ -n $TMP && -d $TMP ]]; then
        rm -rf "$TMP"
    fi
    exit "$status"
}

# require_free ADDR: refuse to run if something already answers there (it would be measured instead).
require_free() {
    if (: <>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; then
        die "something is already listening on $1; stop it or change the ports at the top of $0"
    fi
}

# wait_ready URL PID LOGFILE: poll URL until it answers 2xx, bounded; fail early if PID exits.
wait_ready() {
    local url=$1 pid=$2 logfile=$3 i
    for ((i = 0; i < READY_TIMEOUT_S * 10; i++)); do
        if curl -fs -o /dev/null --max-time 1 "$url"; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "server exited before $url answered; its output:"
            tail -n 40 "$logfile" >&2 || true
            die "server failed to start"
        fi
        sleep 0.1
    done
    tail -n 40 "$logfile" >&2 || true
    die "$url did not answer 200 within ${READY_TIMEOUT_S}s"
}

