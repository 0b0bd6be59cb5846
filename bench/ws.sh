#!/usr/bin/env bash
# Live-updates benchmark: N WebSocket subscribers on `products` (examples/ws_load.rs, a
# compiled client on the same machine) while product updates commit at a steady rate.
# Measures delivery latency (commit -> receipt, every event to every subscriber), server RSS
# per idle connection, and cross-replica delivery on PostgreSQL (subscribers on replica B,
# writes on replica A). Each measurement runs RUNS times; the report gives every run and the
# spread. Writes docs/BENCHMARKS-live-updates.md (overwritten).
#
# Usage: bench/ws.sh   (needs cargo, curl, python3; PostgreSQL on 127.0.0.1:5432 for the
#        cross-replica part, skipped with a note when it is not there)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPORT="$ROOT/docs/BENCHMARKS-live-updates.md"

RUNS=${RUNS:-3}
SUBSCRIBERS=${SUBSCRIBERS:-10000}
RATE=${RATE:-5}            # product updates committed per second
SECONDS_PER_RUN=${SECONDS_PER_RUN:-20}
REPLICA_SUBSCRIBERS=${REPLICA_SUBSCRIBERS:-1000}
ADDR_A=${ADDR_A:-127.0.0.1:18100}
ADDR_B=${ADDR_B:-127.0.0.1:18101}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_BENCH_DB=storefront_ws_bench
READY_TIMEOUT_S=30
STOP_TIMEOUT_S=15
ADMIN_EMAIL=bench@example.com
ADMIN_PASSWORD=bench-password
BENCH_JWT_SECRET=storefront-bench-jwt-secret-0123456789ab
SERVER_SETTINGS=(RUST_LOG=warn RATE_LIMIT_RPS=1000000 RATE_LIMIT_BURST=1000000 WS_MAX_CONNECTIONS=50000
    WS_MAX_PENDING=1024 JWT_SECRET="$BENCH_JWT_SECRET")

TMP=""
PIDS=()
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# serve NAME ADDR DATABASE_URL [ENV...]: start a release storefront, wait for /readyz.
serve() {
    local name=$1 addr=$2 url=$3
    shift 3
    require_free "$addr"
    start_bg "$TMP/$name.log" env -i PATH="$PATH" DATABASE_URL="$url" BIND_ADDR="$addr" "${SERVER_SETTINGS[@]}" "$@" \
        target/release/storefront serve
    wait_ready "http://$addr/readyz" "$STARTED_PID" "$TMP/$name.log"
}

# prepare ADDR DATABASE_URL: an admin token and a product id, in TOKEN and PRODUCT.
prepare() {
    local addr=$1 url=$2
    env -i PATH="$PATH" DATABASE_URL="$url" target/release/storefront user create --email "$ADMIN_EMAIL" \
        --password "$ADMIN_PASSWORD" --role admin >"$TMP/user.log" 2>&1 || true
    TOKEN=$(curl -fsS -H 'Content-Type: application/json' -d "{\"email\":\"$ADMIN_EMAIL\",\"password\":\"$ADMIN_PASSWORD\"}" \
        "http://$addr/api/v1/auth/login" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    PRODUCT=$(curl -fsS -H 'Content-Type: application/json' -H "Authorization: Bearer $TOKEN" \
        -d '{"name":"Live widget","price_cents":100,"stock":0}' "http://$addr/api/v1/products" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# idle_rss PID ADDR: KiB of server RSS per idle subscribed connection.
idle_rss() {
    local pid=$1 addr=$2 before after line
    before=$(rss_kib "$pid")
    start_bg "$TMP/idle.out" target/release/examples/ws_load --subscribe-url "http://$addr" --subscribers "$SUBSCRIBERS" \
        --seconds 600 --idle
    local load=$STARTED_PID i
    for ((i = 0; i < 1200; i++)); do
        grep -q '^ready' "$TMP/idle.out" 2>/dev/null && break
        kill -0 "$load" 2>/dev/null || die "the idle load generator died: $(tail -5 "$TMP/idle.out")"
        sleep 0.1
    done
    sleep 3 # let the server settle after the last handshake
    after=$(rss_kib "$pid")
    stop_pid "$load"
    python3 -c "import sys; print(f'{(int(sys.argv[2]) - int(sys.argv[1])) / int(sys.argv[3]):.2f}')" "$before" "$after" "$SUBSCRIBERS"
}

spread() { # spread FIELD FILE: "min–max (median)" of a JSON field over the lines of FILE
    python3 - "$1" "$2" <<'EOF'
import json, statistics, sys
values = [json.loads(line)[sys.argv[1]] for line in open(sys.argv[2]) if line.startswith("{")]
print(f"{min(values):g}–{max(values):g} (median {statistics.median(values):g})" if values else "n/a")
EOF
}

worst() { # worst FIELD FILE
    python3 -c "import json,sys; v=[json.loads(l)[sys.argv[1]] for l in open(sys.argv[2]) if l.startswith('{')]; print(max(v) if v else 'nan')" "$1" "$2"
}

verdict() { # verdict VALUE LIMIT
    python3 -c "import sys; v=float(sys.argv[1]); print('met' if v == v and v <= float(sys.argv[2]) else 'not met')" "$1" "$2"
}

main() {
    cd "$ROOT"
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    # Server and load generator each hold one descriptor per subscriber (plus a few).
    ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    (($(ulimit -n) > SUBSCRIBERS + 1000)) || die "the open-files limit $(ulimit -n) is too low for $SUBSCRIBERS subscribers"
    log "building (release)"
    cargo build --release --bin storefront --example ws_load
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/storefront-ws-bench.XXXXXX")

    local run pid
    : >"$TMP/latency.jsonl"
    : >"$TMP/rss.txt"
    for ((run = 1; run <= RUNS; run++)); do
        rm -f "$TMP"/bench.db*
        serve "a$run" "$ADDR_A" "sqlite://$TMP/bench.db"
        pid=$STARTED_PID
        prepare "$ADDR_A" "sqlite://$TMP/bench.db"
        log "run $run: idle RSS with $SUBSCRIBERS subscribers"
        idle_rss "$pid" "$ADDR_A" | tee -a "$TMP/rss.txt" >&2
        log "run $run: $SUBSCRIBERS subscribers, $RATE updates/s for ${SECONDS_PER_RUN}s"
        target/release/examples/ws_load --subscribe-url "http://$ADDR_A" --token "$TOKEN" --product "$PRODUCT" \
            --subscribers "$SUBSCRIBERS" --rate "$RATE" --seconds "$SECONDS_PER_RUN" 2>>"$TMP/load.err" |
            tee -a "$TMP/latency.jsonl" >&2
        stop_pid "$pid"
    done

    : >"$TMP/replica.jsonl"
    local replica_note=""
    if curl -s --max-time 1 "http://127.0.0.1:5432" >/dev/null 2>&1 || (: <>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
        local pg_url="${PG_ADMIN_URL%/*}/$PG_BENCH_DB"
        for ((run = 1; run <= RUNS; run++)); do
            psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $PG_BENCH_DB WITH (FORCE)" -c "CREATE DATABASE $PG_BENCH_DB"
            serve "pg-a$run" "$ADDR_A" "$pg_url"
            local pid_a=$STARTED_PID
            serve "pg-b$run" "$ADDR_B" "$pg_url"
            local pid_b=$STARTED_PID
            prepare "$ADDR_A" "$pg_url"
            log "run $run: cross-replica, $REPLICA_SUBSCRIBERS subscribers on B, writes on A"
            target/release/examples/ws_load --subscribe-url "http://$ADDR_B" --write-url "http://$ADDR_A" \
                --token "$TOKEN" --product "$PRODUCT" --subscribers "$REPLICA_SUBSCRIBERS" --rate "$RATE" \
                --seconds "$SECONDS_PER_RUN" 2>>"$TMP/load.err" | tee -a "$TMP/replica.jsonl" >&2
            stop_pid "$pid_a"
            stop_pid "$pid_b"
        done
        psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $PG_BENCH_DB WITH (FORCE)"
    else
        replica_note="PostgreSQL was not reachable on 127.0.0.1:5432: cross-replica delivery was not measured."
    fi

    local p99_worst rss_worst replica_worst
    p99_worst=$(worst p99_ms "$TMP/latency.jsonl")
    rss_worst=$(sort -n "$TMP/rss.txt" | tail -1)
    replica_worst=$(worst p99_ms "$TMP/replica.jsonl")
    {
        printf '# Live-updates benchmark\n\n'
        printf 'Written by `bench/ws.sh` on %s. Machine: %s cores, %s, kernel %s. Commit %s. %s\n\n' \
            "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(nproc)" \
            "$({ grep -m1 -E '^model name' /proc/cpuinfo || echo ': unknown CPU'; } | cut -d: -f2- | sed 's/^ *//')" \
            "$(uname -r)" "$(git rev-parse --short HEAD)" "$(rustc --version)"
        printf 'The server (release build, SQLite unless noted) and the load generator (`examples/ws_load.rs`) share the same 2 cores. '
        printf '%s subscribers on `products`; %s product updates per second for %ss; latency = receipt time minus the event'"'"'s `at` (its commit), over every event delivered to every subscriber. %s runs each; the table gives min–max (median) over runs and judges the worst run.\n\n' \
            "$SUBSCRIBERS" "$RATE" "$SECONDS_PER_RUN" "$RUNS"
        printf '| target | measured over runs | worst run | verdict |\n|---|---|---|---|\n'
        printf '| %s subscribers, delivery p99 ≤ 200 ms | p99 %s ms; p50 %s ms; max %s ms | %s ms | %s |\n' "$SUBSCRIBERS" \
            "$(spread p99_ms "$TMP/latency.jsonl")" "$(spread p50_ms "$TMP/latency.jsonl")" \
            "$(spread max_ms "$TMP/latency.jsonl")" "$p99_worst" "$(verdict "$p99_worst" 200)"
        printf '| ≤ 16 KiB server RSS per idle connection | %s KiB | %s KiB | %s |\n' \
            "$(sort -n "$TMP/rss.txt" | paste -sd' ' | sed 's/ / · /g')" "$rss_worst" "$(verdict "$rss_worst" 16)"
        printf '| cross-replica delivery p99 ≤ 100 ms (PostgreSQL, %s subscribers on B, writes on A) | p99 %s ms; p50 %s ms | %s ms | %s |\n' \
            "$REPLICA_SUBSCRIBERS" "$(spread p99_ms "$TMP/replica.jsonl")" "$(spread p50_ms "$TMP/replica.jsonl")" \
            "$replica_worst" "$(verdict "$replica_worst" 100)"
        printf '\n%s\n\nDeliveries are counted too: a run where `deliveries` < `deliveries_expected` lost or cut subscribers (`subscribers_short`).\n\n' "$replica_note"
        printf '## Raw output\n\nSingle replica (one JSON line per run):\n\n```\n'
        cat "$TMP/latency.jsonl"
        printf '```\n\nIdle RSS per connection, KiB, per run:\n\n```\n'
        cat "$TMP/rss.txt"
        printf '```\n\nCross-replica:\n\n```\n'
        cat "$TMP/replica.jsonl"
        printf '```\n\nCommands: `bench/ws.sh` (settings at its top: RUNS=%s SUBSCRIBERS=%s RATE=%s SECONDS_PER_RUN=%s REPLICA_SUBSCRIBERS=%s).\n' \
            "$RUNS" "$SUBSCRIBERS" "$RATE" "$SECONDS_PER_RUN" "$REPLICA_SUBSCRIBERS"
    } >"$REPORT"
    log "wrote $REPORT"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
