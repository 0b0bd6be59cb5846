#!/usr/bin/env bash
# Memory after sign-ins (issue 20, "sign-ins must not cost 270 MB"): each argon2id run needs
# 19 MiB, and each PasswordHasher thread keeps one block for every run, so after any number
# of sign-ins the process should hold no more than
#     idle RSS + hasher threads × 19 MiB + 10 MB.
# Per run: a release `storefront serve` on a fresh SQLite file; VmRSS from /proc/<pid>/status
# 2 s after it is ready (idle); one registration; SIGNINS sign-ins of that user from
# CLIENTS parallel clients (every hasher thread busy); VmRSS again 2 s after the last one.
# The hasher's thread count comes from the actors API, and /metrics must show one argon2id
# verification per sign-in, or the run is refused. Writes docs/BENCHMARKS-signin-rss.md.
#
# Usage: bench/signin_rss.sh                     (3 runs of 1,000 sign-ins; builds the release binary)
#        RUNS=1 SIGNINS=20 bench/signin_rss.sh    (a quick check that it works)
#        BIN=path/to/storefront ADDR=127.0.0.1:18095 bench/signin_rss.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPORT=${REPORT:-$ROOT/docs/BENCHMARKS-signin-rss.md}
RUNS=${RUNS:-3}
SIGNINS=${SIGNINS:-1000}
CLIENTS=${CLIENTS:-4}
ADDR=${ADDR:-127.0.0.1:18095}
BIN=${BIN:-}
READY_TIMEOUT_S=30
STOP_TIMEOUT_S=15
SETTLE_S=2
ARGON2_BLOCK_MIB=19   # m = 19456 KiB
SLACK_MIB=10          # the issue's 10 MB, rounded up to MiB like every figure here

USER_EMAIL=signin-bench@example.com
USER_PASSWORD=signin-bench-password
ADMIN_EMAIL=signin-bench-admin@example.com
ADMIN_PASSWORD=signin-bench-admin-password
BENCH_JWT_SECRET=storefront-bench-jwt-secret-0123456789ab # 40 characters, used only here

TMP=""
PIDS=()
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

rss_mib() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
hwm_mib() { awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
metric() { # NAME{labels}: its value in /metrics, 0 when absent
    curl -fsS "http://$ADDR/metrics" | awk -v want="$1" '$1 == want {print $2; found=1} END {if (!found) print 0}'
}
token_of() { # EMAIL PASSWORD
    curl -fsS "http://$ADDR/api/v1/auth/login" -H 'content-type: application/json' \
        -d "{\"email\":\"$1\",\"password\":\"$2\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}

# sign_in_many: SIGNINS sign-ins from CLIENTS keep-alive clients; every one must answer 200.
sign_in_many() {
    python3 - "$ADDR" "$USER_EMAIL" "$USER_PASSWORD" "$SIGNINS" "$CLIENTS" <<'PY'
import http.client, json, sys, threading

addr, email, password, total, clients = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
host, port = addr.rsplit(":", 1)
body = json.dumps({"email": email, "password": password})
lock, counts, failures = threading.Lock(), {"left": total}, []

def client():
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    while True:
        with lock:
            if counts["left"] == 0:
                return
            counts["left"] -= 1
        conn.request("POST", "/api/v1/auth/login", body, {"content-type": "application/json"})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            failures.append(response.status)

threads = [threading.Thread(target=client) for _ in range(clients)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
if failures:
    sys.exit(f"{len(failures)} of {total} sign-ins failed: statuses {sorted(set(failures))}")
PY
}

one_run() { # RUN-NUMBER: appends a table row to $TMP/rows
    local run=$1 pid admin threads idle after peak verifications budget met
    rm -f "$TMP/run.db"*
    start_bg "$TMP/server-$run.log" env -i PATH="$PATH" DATABASE_URL="sqlite://$TMP/run.db" BIND_ADDR="$ADDR" \
        JWT_SECRET="$BENCH_JWT_SECRET" RUST_LOG=warn RATE_LIMIT_RPS=1000000 RATE_LIMIT_BURST=1000000 \
        AUTH_RATE_LIMIT_PER_MINUTE=1000000 "$BIN" serve
    pid=$STARTED_PID
    wait_ready "http://$ADDR/readyz" "$pid" "$TMP/server-$run.log"
    sleep "$SETTLE_S"
    idle=$(rss_mib "$pid")
    # The admin is made by another process (its hash is not this server's memory).
    env -i PATH="$PATH" DATABASE_URL="sqlite://$TMP/run.db" "$BIN" user create --email "$ADMIN_EMAIL" \
        --password "$ADMIN_PASSWORD" --role admin >/dev/null
    curl -fsS -o /dev/null "http://$ADDR/api/v1/auth/register" -H 'content-type: application/json' \
        -d "{\"email\":\"$USER_EMAIL\",\"password\":\"$USER_PASSWORD\",\"name\":\"Bench\"}"
    admin=$(token_of "$ADMIN_EMAIL" "$ADMIN_PASSWORD")
    threads=$(curl -fsS "http://$ADDR/api/v1/ops/actors" -H "Authorization: Bearer $admin" |
        python3 -c 'import json,sys; print(next(a["instances"]["configured"] for a in json.load(sys.stdin)["actors"] if a["name"] == "password_hasher"))')
    log "run $run: idle RSS $idle MiB, $threads hasher threads; $SIGNINS sign-ins from $CLIENTS clients"
    sign_in_many
    sleep "$SETTLE_S"
    after=$(rss_mib "$pid")
    peak=$(hwm_mib "$pid")
    verifications=$(metric 'storefront_password_hasher_runs_total{operation="verify"}')
    # The admin's sign-in is one verification too.
    [[ ${verifications%.*} -ge $SIGNINS ]] || die "only $verifications argon2id verifications for $SIGNINS sign-ins"
    budget=$(awk -v idle="$idle" -v t="$threads" -v b="$ARGON2_BLOCK_MIB" -v s="$SLACK_MIB" \
        'BEGIN {printf "%.1f", idle + t * b + s}')
    met=$(awk -v a="$after" -v b="$budget" 'BEGIN {print (a <= b) ? "met" : "**not met**"}')
    log "run $run: RSS after $after MiB (peak $peak MiB), budget $budget MiB: $met"
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$run" "$idle" "$threads" "$SIGNINS" "$after" "$peak" \
        "$budget" "$met" >>"$TMP/rows"
    stop_pid "$pid"
}

main() {
    TMP=$(mktemp -d /tmp/storefront-signin-rss.XXXXXX)
    trap cleanup EXIT INT TERM
    require_free "$ADDR"
    if [[ -z $BIN ]]; then
        log "building the release binary"
        (cd "$ROOT" && cargo build --release --bin storefront)
        BIN=$ROOT/target/release/storefront
    fi
    local load_start commit
    load_start=$(uptime)
    commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    : >"$TMP/rows"
    for ((run = 1; run <= RUNS; run++)); do
        one_run "$run"
    done
    {
        printf '# Memory after sign-ins\n\n'
        printf '**Commit:** `%s` · **Date:** %s · **Runs:** %s\n\n' "$commit" "$(date -u +%Y-%m-%dT%H:%MZ)" "$RUNS"
        printf 'Machine load when the runs started (`uptime`): %s; when they ended: %s\n\n' \
            "${load_start##*: }" "$(uptime | sed 's/.*: //')"
        printf 'Target: RSS after %s sign-ins ≤ idle RSS + hasher threads × %s MiB + %s MiB.\n\n' \
            "$SIGNINS" "$ARGON2_BLOCK_MIB" "$SLACK_MIB"
        printf '| run | idle RSS (MiB) | hasher threads | sign-ins | RSS after (MiB) | peak RSS (MiB) | budget (MiB) | target |\n'
        printf '|---|---|---|---|---|---|---|---|\n'
        cat "$TMP/rows"
        printf '\nMethod: a release `storefront serve` on a fresh SQLite file (RUST_LOG=warn, rate limits\n'
        printf 'out of the way); `VmRSS` of /proc/<pid>/status %s s after `/readyz` first answered 200, then\n' "$SETTLE_S"
        printf 'one registration and %s sign-ins of that user from %s keep-alive clients, then `VmRSS` %s s\n' \
            "$SIGNINS" "$CLIENTS" "$SETTLE_S"
        printf 'after the last answer (`VmHWM` is the peak). Every sign-in answered 200, and\n'
        printf '`storefront_password_hasher_runs_total{operation="verify"}` counted at least one run each.\n'
        printf 'Command: `RUNS=%s SIGNINS=%s CLIENTS=%s bench/signin_rss.sh`.\n' "$RUNS" "$SIGNINS" "$CLIENTS"
    } >"$REPORT"
    log "wrote $REPORT"
}

main "$@"
