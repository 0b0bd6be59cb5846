#!/usr/bin/env bash
# Live-updates benchmark: N WebSocket subscribers on `products` (examples/ws_load.rs, a
# compiled client on the same machine) while product updates commit at a steady rate.
# Measures delivery latency (commit -> receipt, every event to every subscriber) with the
# project's load generator and with an independent one (bench/ws_client.mjs, Node's own
# WebSocket; skipped without node), the same under a hostile mix (HOSTILE never-reading
# clients replaying a HOSTILE_OUTBOX-event outbox from since=0), server RSS per idle
# connection, a full descriptor table of idle subscribers (FULL_SUBSCRIBERS) with HTTP
# answering meanwhile, and cross-replica delivery on PostgreSQL (subscribers on replica B,
# writes on replica A). Each measurement runs RUNS times; the report gives every run and the
# spread, with the load average (`uptime`) at the start of each run. Writes
# docs/BENCHMARKS-live-updates.md (overwritten; REPORT=path writes elsewhere).
#
# Usage: bench/ws.sh   (needs cargo, curl, python3; PostgreSQL on 127.0.0.1:5432 for the
#        cross-replica part, skipped with a note when it is not there)
#   A/B: BASELINE_BIN=/path/to/other/storefront bench/ws.sh runs the single-replica part
#        with that binary and with STOREFRONT_BIN alternately (baseline first in each
#        round), same load generator, and reports both side by side.
#   BUILD=0 uses the binaries as they are; CROSS_REPLICA=0 skips the PostgreSQL part.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPORT=${REPORT:-$ROOT/docs/BENCHMARKS-live-updates.md}
STOREFRONT_BIN=${STOREFRONT_BIN:-target/release/storefront}
BASELINE_BIN=${BASELINE_BIN:-}
WS_LOAD_BIN=${WS_LOAD_BIN:-target/release/examples/ws_load}
BUILD=${BUILD:-1}
CROSS_REPLICA=${CROSS_REPLICA:-1}

RUNS=${RUNS:-3}
SUBSCRIBERS=${SUBSCRIBERS:-10000}
RATE=${RATE:-5}            # product updates committed per second
SECONDS_PER_RUN=${SECONDS_PER_RUN:-20}
REPLICA_SUBSCRIBERS=${REPLICA_SUBSCRIBERS:-1000}
HOSTILE=${HOSTILE:-1000}                 # never-reading replayers in the hostile mix (0 skips it)
HOSTILE_OUTBOX=${HOSTILE_OUTBOX:-10000}  # product updates they replay from since=0
# Idle subscribers held at once: as many as the open-file limit leaves (0 skips it).
FULL_SUBSCRIBERS=${FULL_SUBSCRIBERS:-18000}
NODE=${NODE:-$(command -v node || true)}
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
    WS_MAX_ANONYMOUS_PER_ADDRESS=1000000
    WS_MAX_PENDING=1024 JWT_SECRET="$BENCH_JWT_SECRET")

TMP=""
PIDS=()
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# serve NAME ADDR DATABASE_URL [BINARY]: start a release storefront, wait for /readyz.
serve() {
    local name=$1 addr=$2 url=$3 bin=${4:-$STOREFRONT_BIN}
    require_free "$addr"
    start_bg "$TMP/$name.log" env -i PATH="$PATH" DATABASE_URL="$url" BIND_ADDR="$addr" "${SERVER_SETTINGS[@]}" \
        "$bin" serve
    wait_ready "http://$addr/readyz" "$STARTED_PID" "$TMP/$name.log"
}

# prepare ADDR DATABASE_URL: an admin token and a product id, in TOKEN and PRODUCT.
prepare() {
    local addr=$1 url=$2
    env -i PATH="$PATH" DATABASE_URL="$url" "$STOREFRONT_BIN" user create --email "$ADMIN_EMAIL" \
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
    start_bg "$TMP/idle.out" "$WS_LOAD_BIN" --subscribe-url "http://$addr" --subscribers "$SUBSCRIBERS" \
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

load_average() { cut -d' ' -f1-3 /proc/loadavg; }

# peak_rss PID OUTFILE: samples the server's RSS every 100 ms until killed; the file holds
# the peak in KiB.
peak_rss() {
    local pid=$1 out=$2 peak=0 now
    while kill -0 "$pid" 2>/dev/null; do
        now=$(rss_kib "$pid" 2>/dev/null || echo 0)
        ((now > peak)) && peak=$now && echo "$peak" >"$out"
        sleep 0.1
    done
}

# hostile_run RUN: readers' latency while HOSTILE clients replay the outbox and never read.
hostile_run() {
    local run=$1 pid sampler line load
    rm -f "$TMP"/bench.db*
    serve "hostile$run" "$ADDR_A" "sqlite://$TMP/bench.db"
    pid=$STARTED_PID
    prepare "$ADDR_A" "sqlite://$TMP/bench.db"
    load=$(load_average)
    log "run $run (load $load): hostile mix, $SUBSCRIBERS readers + $HOSTILE never-reading replayers over $HOSTILE_OUTBOX events"
    echo 0 >"$TMP/peak.txt"
    peak_rss "$pid" "$TMP/peak.txt" &
    sampler=$!
    line=$("$WS_LOAD_BIN" --subscribe-url "http://$ADDR_A" --token "$TOKEN" --product "$PRODUCT" \
        --subscribers "$SUBSCRIBERS" --rate "$RATE" --seconds "$SECONDS_PER_RUN" --prefill "$HOSTILE_OUTBOX" \
        --hostile "$HOSTILE" 2>>"$TMP/load.err")
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    line=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["peak_rss_mb"]=round(int(sys.argv[2])/1024,1); print(json.dumps(d))' \
        "$line" "$(cat "$TMP/peak.txt")")
    echo "$line" | tee -a "$TMP/hostile.jsonl" >&2
    printf '%s | %s | %s\n' "$run" "$load" "$line" >>"$TMP/hostile-runs.txt"
    stop_pid "$pid"
}

# full_run RUN: FULL_SUBSCRIBERS idle subscribers at once, and HTTP answering meanwhile.
full_run() {
    local run=$1 pid load started answers
    rm -f "$TMP"/bench.db*
    serve "full$run" "$ADDR_A" "sqlite://$TMP/bench.db"
    pid=$STARTED_PID
    prepare "$ADDR_A" "sqlite://$TMP/bench.db"
    load=$(load_average)
    log "run $run (load $load): $FULL_SUBSCRIBERS idle subscribers"
    local before after
    before=$(rss_kib "$pid")
    start_bg "$TMP/full.out" "$WS_LOAD_BIN" --subscribe-url "http://$ADDR_A" --subscribers "$FULL_SUBSCRIBERS" \
        --seconds 600 --idle
    local gen=$STARTED_PID i
    for ((i = 0; i < 3000; i++)); do
        grep -q '^ready' "$TMP/full.out" 2>/dev/null && break
        kill -0 "$gen" 2>/dev/null || break
        sleep 0.1
    done
    sleep 3
    after=$(rss_kib "$pid")
    started=$(curl -fsS "http://$ADDR_A/metrics" | awk '/^storefront_ws_connections /{print $2}')
    # While they are held: readiness and a cached product GET, each timed.
    answers=$(for path in /readyz "/api/v1/products/$PRODUCT" "/api/v1/products/$PRODUCT"; do
        curl -s -o /dev/null -w '%{http_code} %{time_total}s, ' --max-time 5 "http://$ADDR_A$path"
    done)
    stop_pid "$gen"
    local line
    line=$(python3 -c 'import json,sys; print(json.dumps({"held": int(float(sys.argv[1] or 0)), "asked": int(sys.argv[2]), "rss_kib_per_connection": round((int(sys.argv[4]) - int(sys.argv[3])) / max(1, int(float(sys.argv[1] or 0))), 2), "http_while_held": sys.argv[5].rstrip(", ")}))' \
        "$started" "$FULL_SUBSCRIBERS" "$before" "$after" "$answers")
    echo "$line" | tee -a "$TMP/full.jsonl" >&2
    printf '%s | %s | %s\n' "$run" "$load" "$line" >>"$TMP/full-runs.txt"
    stop_pid "$pid"
}

# single_run VARIANT BINARY RUN: one single-replica measurement (idle RSS, then latency),
# appended to $TMP/latency-VARIANT.jsonl, $TMP/rss-VARIANT.txt and $TMP/runs.txt.
single_run() {
    local variant=$1 bin=$2 run=$3 pid load rss line
    rm -f "$TMP"/bench.db*
    serve "$variant$run" "$ADDR_A" "sqlite://$TMP/bench.db" "$bin"
    pid=$STARTED_PID
    prepare "$ADDR_A" "sqlite://$TMP/bench.db"
    load=$(load_average)
    log "run $run ($variant, load $load): idle RSS with $SUBSCRIBERS subscribers"
    rss=$(idle_rss "$pid" "$ADDR_A")
    echo "$rss" | tee -a "$TMP/rss-$variant.txt" >&2
    log "run $run ($variant): $SUBSCRIBERS subscribers, $RATE updates/s for ${SECONDS_PER_RUN}s"
    line=$("$WS_LOAD_BIN" --subscribe-url "http://$ADDR_A" --token "$TOKEN" --product "$PRODUCT" \
        --subscribers "$SUBSCRIBERS" --rate "$RATE" --seconds "$SECONDS_PER_RUN" 2>>"$TMP/load.err")
    echo "$line" | tee -a "$TMP/latency-$variant.jsonl" >&2
    printf '%s | %s | %s | %s KiB | %s\n' "$run" "$variant" "$load" "$rss" "$line" >>"$TMP/runs.txt"
    if [[ -n $NODE && $variant == candidate ]]; then
        log "run $run ($variant): the same with the independent client (Node)"
        line=$("$NODE" --experimental-websocket "$ROOT/bench/ws_client.mjs" --url "http://$ADDR_A" --token "$TOKEN" \
            --product "$PRODUCT" --subscribers "$SUBSCRIBERS" --rate "$RATE" --seconds "$SECONDS_PER_RUN" 2>>"$TMP/load.err")
        echo "$line" | tee -a "$TMP/latency-node.jsonl" >&2
        printf '%s | %s (node) | %s | | %s\n' "$run" "$variant" "$(load_average)" "$line" >>"$TMP/runs.txt"
    fi
    stop_pid "$pid"
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
    if [[ $BUILD == 1 ]]; then
        log "building (release)"
        cargo build --release --bin storefront --example ws_load
    fi
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/storefront-ws-bench.XXXXXX")

    local run pid variants=(candidate)
    [[ -n $BASELINE_BIN ]] && variants=(baseline candidate)
    : >"$TMP/runs.txt"
    for variant in "${variants[@]}"; do
        : >"$TMP/latency-$variant.jsonl"
        : >"$TMP/rss-$variant.txt"
    done
    : >"$TMP/latency-node.jsonl"
    : >"$TMP/hostile.jsonl"
    : >"$TMP/hostile-runs.txt"
    : >"$TMP/full.jsonl"
    : >"$TMP/full-runs.txt"
    for ((run = 1; run <= RUNS; run++)); do
        [[ -n $BASELINE_BIN ]] && single_run baseline "$BASELINE_BIN" "$run"
        single_run candidate "$STOREFRONT_BIN" "$run"
        ((HOSTILE > 0)) && hostile_run "$run"
        ((FULL_SUBSCRIBERS > 0)) && full_run "$run"
    done

    : >"$TMP/replica.jsonl"
    : >"$TMP/replica-runs.txt"
    local replica_note=""
    if [[ $CROSS_REPLICA != 1 ]]; then
        replica_note="Cross-replica delivery was not measured this time (CROSS_REPLICA=0)."
    elif curl -s --max-time 1 "http://127.0.0.1:5432" >/dev/null 2>&1 || (: <>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
        local pg_url="${PG_ADMIN_URL%/*}/$PG_BENCH_DB"
        for ((run = 1; run <= RUNS; run++)); do
            psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $PG_BENCH_DB WITH (FORCE)" -c "CREATE DATABASE $PG_BENCH_DB"
            serve "pg-a$run" "$ADDR_A" "$pg_url"
            local pid_a=$STARTED_PID
            serve "pg-b$run" "$ADDR_B" "$pg_url"
            local pid_b=$STARTED_PID
            prepare "$ADDR_A" "$pg_url"
            local load line
            load=$(load_average)
            log "run $run (load $load): cross-replica, $REPLICA_SUBSCRIBERS subscribers on B, writes on A"
            line=$("$WS_LOAD_BIN" --subscribe-url "http://$ADDR_B" --write-url "http://$ADDR_A" \
                --token "$TOKEN" --product "$PRODUCT" --subscribers "$REPLICA_SUBSCRIBERS" --rate "$RATE" \
                --seconds "$SECONDS_PER_RUN" 2>>"$TMP/load.err")
            echo "$line" | tee -a "$TMP/replica.jsonl" >&2
            printf '%s | %s | %s\n' "$run" "$load" "$line" >>"$TMP/replica-runs.txt"
            stop_pid "$pid_a"
            stop_pid "$pid_b"
        done
        psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $PG_BENCH_DB WITH (FORCE)"
    else
        replica_note="PostgreSQL was not reachable on 127.0.0.1:5432: cross-replica delivery was not measured."
    fi

    local p99_worst rss_worst replica_worst variant
    p99_worst=$(worst p99_ms "$TMP/latency-candidate.jsonl")
    rss_worst=$(sort -n "$TMP/rss-candidate.txt" | tail -1)
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
        for variant in "${variants[@]}"; do
            local label="" worst_p99 worst_rss
            [[ -n $BASELINE_BIN ]] && label=" — $variant ($([[ $variant == baseline ]] && echo "$BASELINE_BIN" || echo "$STOREFRONT_BIN"))"
            worst_p99=$(worst p99_ms "$TMP/latency-$variant.jsonl")
            worst_rss=$(sort -n "$TMP/rss-$variant.txt" | tail -1)
            printf '| %s subscribers, delivery p99 ≤ 100 ms%s | p99 %s ms; p50 %s ms; max %s ms | %s ms | %s |\n' "$SUBSCRIBERS" \
                "$label" "$(spread p99_ms "$TMP/latency-$variant.jsonl")" "$(spread p50_ms "$TMP/latency-$variant.jsonl")" \
                "$(spread max_ms "$TMP/latency-$variant.jsonl")" "$worst_p99" "$(verdict "$worst_p99" 100)"
            printf '| ≤ 8 KiB server RSS per idle connection%s | %s KiB | %s KiB | %s |\n' "$label" \
                "$(sort -n "$TMP/rss-$variant.txt" | paste -sd' ' | sed 's/ / · /g')" "$worst_rss" "$(verdict "$worst_rss" 8)"
        done
        if [[ -s $TMP/latency-node.jsonl ]]; then
            local node_worst
            node_worst=$(worst p99_ms "$TMP/latency-node.jsonl")
            printf '| the same, independent client (Node), p99 ≤ 100 ms | p99 %s ms; p50 %s ms; max %s ms | %s ms | %s |\n' \
                "$(spread p99_ms "$TMP/latency-node.jsonl")" "$(spread p50_ms "$TMP/latency-node.jsonl")" \
                "$(spread max_ms "$TMP/latency-node.jsonl")" "$node_worst" "$(verdict "$node_worst" 100)"
        fi
        if [[ -s $TMP/hostile.jsonl ]]; then
            local hostile_rss ratios worst_ratio
            hostile_rss=$(worst peak_rss_mb "$TMP/hostile.jsonl")
            # Each hostile run against the run without hostile clients just before it.
            ratios=$(python3 - "$TMP/latency-candidate.jsonl" "$TMP/hostile.jsonl" <<'PY'
import json, sys
plain = [json.loads(l)["p99_ms"] for l in open(sys.argv[1]) if l.startswith("{")]
hostile = [json.loads(l)["p99_ms"] for l in open(sys.argv[2]) if l.startswith("{")]
print(" · ".join(f"{h:g}/{p:g} ms = {h / p:.2f}" for p, h in zip(plain, hostile)))
print(max(h / p for p, h in zip(plain, hostile)))
PY
)
            worst_ratio=$(tail -1 <<<"$ratios")
            printf '| hostile mix (%s readers + %s never-reading replayers of %s events): server RSS ≤ 400 MB | peak %s MB | %s MB | %s |\n' \
                "$SUBSCRIBERS" "$HOSTILE" "$HOSTILE_OUTBOX" "$(spread peak_rss_mb "$TMP/hostile.jsonl")" "$hostile_rss" "$(verdict "$hostile_rss" 400)"
            printf '| hostile mix: readers'"'"' p99 within 20%% of the same run without them (ratio ≤ 1.2) | %s | %s | %s |\n' \
                "$(head -1 <<<"$ratios")" "$(printf '%.2f' "$worst_ratio")" "$(verdict "$worst_ratio" 1.2)"
            printf '| hostile mix: every reader gets every event; every never-reading client closed | subscribers short %s; hostile closed %s, not closed %s | %s short, %s not closed | %s |\n' \
                "$(spread subscribers_short "$TMP/hostile.jsonl")" "$(spread hostile_closed "$TMP/hostile.jsonl")" \
                "$(spread hostile_not_closed "$TMP/hostile.jsonl")" "$(worst subscribers_short "$TMP/hostile.jsonl")" \
                "$(worst hostile_not_closed "$TMP/hostile.jsonl")" \
                "$(verdict "$(python3 -c 'import sys; print(float(sys.argv[1]) + float(sys.argv[2]))' "$(worst subscribers_short "$TMP/hostile.jsonl")" "$(worst hostile_not_closed "$TMP/hostile.jsonl")")" 0)"
        fi
        if [[ -s $TMP/full.jsonl ]]; then
            local fewest
            fewest=$(python3 -c 'import json,sys; print(min(json.loads(l)["held"] for l in open(sys.argv[1])))' "$TMP/full.jsonl")
            printf '| ≥ 18,000 idle subscribers held, HTTP answering meanwhile | held %s; per connection %s KiB | %s held | %s |\n' \
                "$(spread held "$TMP/full.jsonl")" "$(spread rss_kib_per_connection "$TMP/full.jsonl")" "$fewest" \
                "$(python3 -c 'import sys; print("met" if int(sys.argv[1]) >= 18000 else "not met")' "$fewest")"
        fi
        if [[ -s $TMP/replica.jsonl ]]; then
            printf '| cross-replica delivery p99 ≤ 100 ms (PostgreSQL, %s subscribers on B, writes on A) | p99 %s ms; p50 %s ms | %s ms | %s |\n' \
                "$REPLICA_SUBSCRIBERS" "$(spread p99_ms "$TMP/replica.jsonl")" "$(spread p50_ms "$TMP/replica.jsonl")" \
                "$replica_worst" "$(verdict "$replica_worst" 100)"
        else
            printf '| cross-replica delivery p99 ≤ 100 ms | not measured (see below) | | |\n'
        fi
        printf '\n%s\n\nDeliveries are counted too: a run where `deliveries` < `deliveries_expected` lost or cut subscribers (`subscribers_short`).\n\n' "$replica_note"
        printf '## Raw output\n\nSingle replica, in the order run (run | variant | load average 1/5/15 min at its start | idle RSS per connection | latency JSON):\n\n```\n'
        cat "$TMP/runs.txt"
        printf '```\n\nHostile mix (run | load average at its start | latency JSON with the server'"'"'s peak RSS):\n\n```\n'
        cat "$TMP/hostile-runs.txt"
        printf '```\n\nA full descriptor table (run | load average | connections held, RSS per connection, HTTP answers while held: status and time):\n\n```\n'
        cat "$TMP/full-runs.txt"
        printf '```\n\nCross-replica (run | load average at its start | latency JSON):\n\n```\n'
        cat "$TMP/replica-runs.txt"
        printf '```\n\nCommands: `%sbench/ws.sh` (settings at its top: RUNS=%s SUBSCRIBERS=%s RATE=%s SECONDS_PER_RUN=%s REPLICA_SUBSCRIBERS=%s).\n' \
            "$([[ -n $BASELINE_BIN ]] && echo "BASELINE_BIN=$BASELINE_BIN STOREFRONT_BIN=$STOREFRONT_BIN WS_LOAD_BIN=$WS_LOAD_BIN ")" "$RUNS" "$SUBSCRIBERS" "$RATE" "$SECONDS_PER_RUN" "$REPLICA_SUBSCRIBERS"
    } >"$REPORT"
    log "wrote $REPORT"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
