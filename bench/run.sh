#!/usr/bin/env bash
# The benchmark suite of issue 11, one target after the other on this machine:
# - a bare actix-web server (examples/bare.rs, the HTTP ceiling) against
#   `GET /api/v1/products/{id}` on storefront with the cache on and with it off (wrk);
# - one product read by id through the DbExecutor pool against the idiomatic
#   `web::block` + r2d2 in the handler (examples/db_read.rs, same database, same run);
# - start to ready on a fresh SQLite file, and idle RSS after it;
# - the WebSocket fan-out (bench/ws.sh, folded in unless SKIP_WS=1);
# - the cached GET again with the rate limits shared through Redis (RATE_LIMIT_REDIS_URL at a
#   redis-server this script starts on REDIS_ADDR; skipped with SKIP_REDIS=1).
# Writes docs/BENCHMARKS.md (overwritten).
#
# Usage: bench/run.sh        (from anywhere; needs cargo, curl, python3; installs wrk if missing)
#        SKIP_WS=1 bench/run.sh   skips bench/ws.sh (and keeps its last report out)
#        SKIP_REDIS=1 bench/run.sh   skips the Redis-limiter run (f)
#        PROFILE=debug WARMUP=1s DURATION=2s SKIP_ORDERS=1 SKIP_WS=1 REPORT=/tmp/check.md bench/run.sh
#            checks the script in minutes, without a release build (the figures mean nothing)
#        BARE_ADDR, CACHED_ADDR, UNCACHED_ADDR, DBREAD_ADDR, FRESH_ADDR, REDIS_ADDR, SHARED_ADDR (and bench/orders.sh's
#        ORDERS_ADDR, bench/ws.sh's ADDR_A/ADDR_B) move the servers when the ports are taken.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPORT=${REPORT:-"$ROOT/docs/BENCHMARKS.md"}
# PROFILE=debug runs debug builds: to check the script quickly, never to measure.
PROFILE=${PROFILE:-release}
BIN="target/$PROFILE"

CONNECTIONS=64
THREADS=2
WARMUP=${WARMUP:-3s}
DURATION=${DURATION:-15s}
BARE_ADDR=${BARE_ADDR:-127.0.0.1:18090}
CACHED_ADDR=${CACHED_ADDR:-127.0.0.1:18091}
UNCACHED_ADDR=${UNCACHED_ADDR:-127.0.0.1:18092}
DBREAD_ADDR=${DBREAD_ADDR:-127.0.0.1:18093}
FRESH_ADDR=${FRESH_ADDR:-127.0.0.1:18094}
REDIS_ADDR=${REDIS_ADDR:-127.0.0.1:18095}
SHARED_ADDR=${SHARED_ADDR:-127.0.0.1:18096}
READY_TIMEOUT_S=30
STOP_TIMEOUT_S=15

ADMIN_EMAIL=bench@example.com
ADMIN_PASSWORD=bench-password
BENCH_JWT_SECRET=storefront-bench-jwt-secret-0123456789ab # 40 characters, used only here
PRODUCT_BODY='{"name":"Bench widget","description":"A product for benchmarking","price_cents":1999,"stock":100}'
# Settings every storefront run gets; the cache-off run adds CACHE_CAPACITY=0.
SERVER_SETTINGS=(RUST_LOG=warn RATE_LIMIT_RPS=1000000 RATE_LIMIT_BURST=1000000)

TMP=""
PIDS=()

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# --- measuring ------------------------------------------------------------------------------

# measure NAME URL: a warm-up, then the measured run; raw output in $TMP/NAME.wrk.
measure() {
    local name=$1 url=$2
    curl -fsS -o "$TMP/$name.body" "$url" || die "GET $url did not answer 2xx before measuring"
    log "$name: warm-up $WARMUP ($url)"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$url" >"$TMP/$name.warmup.wrk"
    log "$name: measuring $DURATION"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$url" | tee "$TMP/$name.wrk" >&2
}

# parse_wrk FILE: prints "req/s<TAB>p50 ms<TAB>p99 ms<TAB>non-2xx<TAB>socket errors<TAB>requests".
parse_wrk() {
    python3 - "$1" <<'PY'
import re
import sys

text = open(sys.argv[1], encoding="utf-8").read()
UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def to_ms(value):
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(us|ms|s|m|h)", value)
    if not match:
        sys.exit(f"parse_wrk: unrecognised latency {value!r} in {sys.argv[1]}")
    return float(match.group(1)) * UNITS_MS[match.group(2)]


def find(pattern, what):
    match = re.search(pattern, text, re.MULTILINE)
    if not match:
        sys.exit(f"parse_wrk: no {what} in {sys.argv[1]}")
    return match


rps = float(find(r"^Requests/sec:\s+([0-9.]+)", "Requests/sec line").group(1))
p50 = to_ms(find(r"^\s+50%\s+(\S+)\s*$", "50% latency line").group(1))
p99 = to_ms(find(r"^\s+99%\s+(\S+)\s*$", "99% latency line").group(1))
requests = int(find(r"^\s+(\d+) requests in ", "request count").group(1))
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
print(
    f"{rps:.2f}\t{p50:.3f}\t{p99:.3f}\t{int(non2xx.group(1)) if non2xx else 0}\t"
    f"{sum(map(int, sockets.groups())) if sockets else 0}\t{requests}"
)
PY
}

# percent PART WHOLE
percent() { python3 -c 'import sys; print(f"{100 * float(sys.argv[1]) / float(sys.argv[2]):.1f}")' "$1" "$2"; }

# Counters about the cache and the rate limiter, scraped from /metrics after a run.
scrape_counters() {
    curl -fsS --max-time 5 "http://$1/metrics" 2>/dev/null | grep -E 'cache|rate_limit' | grep -v '^#' || true
}

# --- the report -----------------------------------------------------------------------------

# fence FILE: FILE's content in a fenced block (or a note that it is empty).
fence() {
    if [[ -s $1 ]]; then
        printf '```text\n'
        cat "$1"
        printf '```\n'
    else
        printf '(empty)\n'
    fi
}

write_report() {
    local out=$1 bare cached uncached
    local b_rps b_p50 b_p99 b_non b_sock b_req
    local c_rps c_p50 c_p99 c_non c_sock c_req
    local u_rps u_p50 u_p99 u_non u_sock u_req
    bare=$(parse_wrk "$TMP/bare.wrk")
    cached=$(parse_wrk "$TMP/cached.wrk")
    uncached=$(parse_wrk "$TMP/uncached.wrk")
    IFS=$'\t' read -r b_rps b_p50 b_p99 b_non b_sock b_req <<<"$bare"
    IFS=$'\t' read -r c_rps c_p50 c_p99 c_non c_sock c_req <<<"$cached"
    IFS=$'\t' read -r u_rps u_p50 u_p99 u_non u_sock u_req <<<"$uncached"
    local k_rps k_p50 k_p99 k_non k_sock k_req a_rps a_p50 a_p99 a_non a_sock a_req
    IFS=$'\t' read -r k_rps k_p50 k_p99 k_non k_sock k_req <<<"$(parse_wrk "$TMP/block.wrk")"
    IFS=$'\t' read -r a_rps a_p50 a_p99 a_non a_sock a_req <<<"$(parse_wrk "$TMP/actor.wrk")"
    local a_pct c_met a_met rss_met ready_met
    a_pct=$(percent "$a_rps" "$k_rps")
    met() { if python3 -c "import sys; sys.exit(0 if ($1) else 1)"; then echo met; else echo "**not met**"; fi; }
    c_met=$(met "$c_rps >= 0.5 * $b_rps and $c_p99 < 10 and $c_non == 0")
    # (f): the cached GET with the limits shared through Redis, when it ran.
    local r_row r_target r_rps r_p50 r_p99 r_non r_sock r_req r_pct r_met
    if [[ -s $TMP/shared.wrk ]]; then
        IFS=$'\t' read -r r_rps r_p50 r_p99 r_non r_sock r_req <<<"$(parse_wrk "$TMP/shared.wrk")"
        r_pct=$(percent "$r_rps" "$b_rps")
        r_met=$(met "$r_rps >= 0.4 * $b_rps and $r_non == 0 and '$SHARED_MODE' == 'redis'")
        r_row="| (f) storefront \`GET /api/v1/products/{id}\`, cache on, limits shared through Redis (\`RATE_LIMIT_REDIS_URL\`) | $r_rps | $r_p50 | $r_p99 | $r_pct | $r_non | $r_sock |"
        r_target="| cached GET with the Redis limiter ≥ 40% of bare (limiter still on Redis at the end: $SHARED_MODE) | ${r_pct}%, p99 ${r_p99} ms | $r_met |"
    else
        r_row="| (f) storefront \`GET /api/v1/products/{id}\`, limits shared through Redis | not run (SKIP_REDIS=1) | | | | | |"
        r_target="| cached GET with the Redis limiter ≥ 40% of bare | not run | not measured |"
    fi
    a_met=$(met "$a_rps >= 0.9 * $k_rps and $a_non == 0")
    rss_met=$(met "$IDLE_RSS_MB <= 30")
    ready_met=$(met "$READY_S <= 1")

    local c_pct u_pct verdict
    c_pct=$(percent "$c_rps" "$b_rps")
    u_pct=$(percent "$u_rps" "$b_rps")
    if python3 -c 'import sys; r, b, p99, bad = map(float, sys.argv[1:]); sys.exit(0 if r >= 0.5 * b and p99 < 10 and bad == 0 else 1)' \
        "$c_rps" "$b_rps" "$c_p99" "$c_non"; then
        verdict="**Met**: cached GET reached ${c_pct}% of bare throughput with p99 ${c_p99} ms."
    else
        verdict="**Not met**: cached GET reached ${c_pct}% of bare throughput with p99 ${c_p99} ms"
        if [[ $c_non != 0 ]]; then
            verdict+=" (and ${c_non} non-2xx responses, so the run is not valid)"
        fi
        verdict+="."
    fi

    local wrk_warm="wrk -t$THREADS -c$CONNECTIONS -d$WARMUP URL"
    local wrk_run="wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency URL"
    local settings="${SERVER_SETTINGS[*]}"
    local db_url="sqlite://$TMP/bench.db"

    {
        cat <<EOF
# Benchmarks

Written by \`bench/run.sh\`; do not edit by hand, run the script again.

- **Date:** $RUN_DATE
- **Machine:** $MACHINE_CPU; $MACHINE_CORES cores (\`nproc\`); kernel $MACHINE_KERNEL (\`uname -r\`)
- **Commit:** \`$GIT_COMMIT\`$GIT_DIRTY
- **Toolchain:** $RUSTC_VERSION; release profile; $WRK_VERSION
- **Load:** wrk, $CONNECTIONS connections, $THREADS threads; $WARMUP warm-up, then $DURATION measured with \`--latency\`.

The server under test **and wrk share the same $MACHINE_CORES cores** (everything on 127.0.0.1), so
every figure includes wrk's own CPU use and absolute numbers are lower than on separate machines;
the ratios to the bare server are the meaningful part. The three servers ran one after the other,
never at the same time.

## Results

| Scenario | Requests/s | p50 (ms) | p99 (ms) | % of bare throughput | Non-2xx | Socket errors |
|---|---:|---:|---:|---:|---:|---:|
| (a) bare actix-web \`GET /bare\` | $b_rps | $b_p50 | $b_p99 | 100.0 | $b_non | $b_sock |
| (b) storefront \`GET /api/v1/products/{id}\`, cache on | $c_rps | $c_p50 | $c_p99 | $c_pct | $c_non | $c_sock |
| (c) storefront \`GET /api/v1/products/{id}\`, cache off (\`CACHE_CAPACITY=0\`) | $u_rps | $u_p50 | $u_p99 | $u_pct | $u_non | $u_sock |
$r_row

| Database read (one product by id, \`examples/db_read.rs\`) | Requests/s | p50 (ms) | p99 (ms) | % of web::block | Non-2xx | Socket errors |
|---|---:|---:|---:|---:|---:|---:|
| (d) \`web::block\` + r2d2 pool in the handler | $k_rps | $k_p50 | $k_p99 | 100.0 | $k_non | $k_sock |
| (e) DbExecutor pool (\`DbGateway::run(GetProduct)\`) | $a_rps | $a_p50 | $a_p99 | $a_pct | $a_non | $a_sock |

## Targets

| Target | Measured | |
|---|---|---|
| cached GET ≥ 50% of bare, p99 < 10 ms at $CONNECTIONS connections | ${c_pct}%, p99 ${c_p99} ms | $c_met |
$r_target
| DbExecutor read ≥ 90% of web::block read | ${a_pct}% | $a_met |
| idle RSS ≤ 30 MB | $IDLE_RSS_MB MB | $rss_met |
| start to ready (SQLite, fresh file) ≤ 1 s | $READY_S s | $ready_met |
| order placement on PostgreSQL ≥ 40% of pgbench TPC-B-like, 0 5xx, 0 invariant breaks | $ORDERS_MEASURED | $ORDERS_MET |
| WebSocket fan-out | see below (bench/ws.sh) | see below |

Idle RSS is \`VmRSS\` of \`storefront serve\` 2 s after its first \`/readyz\` 200 on a fresh SQLite
file, with no request served but the probe; start to ready is from the exec to that first 200
(polled every 10 ms, so it includes up to 10 ms of polling).

Requests measured: bare $b_req, cache on $c_req, cache off $u_req. Response bodies: bare
$(wc -c <"$TMP/bare.body" | tr -d ' ') bytes, product $(wc -c <"$TMP/cached.body" | tr -d ' ') bytes.

**Target:** cached GET ≥ 50% of bare throughput at $CONNECTIONS connections, with p99 < 10 ms.
$verdict

The bare server (\`examples/bare.rs\`) has no middleware, no logging and a fixed body: it is the
ceiling for actix-web on this machine, not a fair competitor. Storefront adds its middleware
(rate limiter actor, metrics, error rendering and the rest), JSON serialisation of the product and,
with the cache off, a database round trip on every request.

## Commands

Build: \`cargo build --release --bin storefront --example bare --example db_read\`

Machine load when the run started (\`uptime\`): $LOAD_BEFORE; when it ended: $(uptime | sed 's/.*load/load/').

Setup (once, fresh SQLite database in a temporary directory, removed afterwards):

\`\`\`sh
env -i PATH="\$PATH" DATABASE_URL=$db_url \\
  target/release/storefront user create --email $ADMIN_EMAIL --password '$ADMIN_PASSWORD' --role admin
\`\`\`

Servers (\`JWT_SECRET\` is a fixed 40-character value set in \`bench/run.sh\`; \`env -i\` so that
nothing else from the caller's environment leaks in):

\`\`\`sh
# (a)
target/release/examples/bare $BARE_ADDR
# (b) cache on: default settings
env -i PATH="\$PATH" DATABASE_URL=$db_url BIND_ADDR=$CACHED_ADDR $settings JWT_SECRET=... \\
  target/release/storefront serve
# (c) cache off
env -i PATH="\$PATH" DATABASE_URL=$db_url BIND_ADDR=$UNCACHED_ADDR $settings JWT_SECRET=... CACHE_CAPACITY=0 \\
  target/release/storefront serve
# (f) limits shared through Redis (a private server, nothing persisted)
redis-server --bind 127.0.0.1 --port ${REDIS_ADDR##*:} --save '' --appendonly no --dir \$TMP
env -i PATH="\$PATH" DATABASE_URL=$db_url BIND_ADDR=$SHARED_ADDR $settings JWT_SECRET=... \\
  RATE_LIMIT_REDIS_URL=redis://$REDIS_ADDR target/release/storefront serve
\`\`\`

All the load of one run comes from one address, so every request of (b) and (f) draws on one
client's bucket (generous, never refusing): on the worker that owns it the decision is local,
the other worker spends leases of up to 1,024 tokens (one message to the owner per lease), and in
(f) each worker holds leases from Redis (one Redis call per lease). The rate-limiter counters
after each run show how many leases and Redis calls that took.

Before (b): \`POST /api/v1/auth/login\` as the admin, then \`POST /api/v1/products\` with
\`$PRODUCT_BODY\`; both storefront runs read product \`$PRODUCT_ID\`.

Load, for each URL (\`http://$BARE_ADDR/bare\`, \`http://$CACHED_ADDR/api/v1/products/$PRODUCT_ID\`,
\`http://$UNCACHED_ADDR/api/v1/products/$PRODUCT_ID\`, \`http://$SHARED_ADDR/api/v1/products/$PRODUCT_ID\`):

\`\`\`sh
$wrk_warm                # warm-up, not recorded
$wrk_run     # measured
\`\`\`

Database read, same SQLite file, after (c): \`target/release/examples/db_read $db_url $DBREAD_ADDR\`,
then the same wrk commands at \`http://$DBREAD_ADDR/block/$PRODUCT_ID\` and
\`http://$DBREAD_ADDR/actor/$PRODUCT_ID\`. Start to ready: \`storefront serve\` on a new SQLite
file at $FRESH_ADDR, polled with \`curl http://$FRESH_ADDR/readyz\` every 10 ms.

## Raw output

EOF
        local name title addr
        for name in bare cached uncached shared block actor; do
            [[ -s $TMP/$name.wrk ]] || continue
            case $name in
            bare) title="(a) bare" addr=$BARE_ADDR ;;
            block) title="(d) web::block read" addr="" ;;
            actor) title="(e) DbExecutor read" addr="" ;;
            cached) title="(b) cache on" addr=$CACHED_ADDR ;;
            uncached) title="(c) cache off" addr=$UNCACHED_ADDR ;;
            shared) title="(f) limits shared through Redis" addr=$SHARED_ADDR ;;
            esac
            printf '<details><summary>%s: wrk output</summary>\n\n' "$title"
            fence "$TMP/$name.wrk"
            if [[ -n $addr && $name != bare ]]; then
                # shellcheck disable=SC2016 # the backticks are Markdown
                printf '\nCache and rate-limiter counters from `http://%s/metrics` after the run:\n\n' "$addr"
                fence "$TMP/$name.counters"
                printf '\nServer log (RUST_LOG=warn; %s lines, the last 20 shown):\n\n' "$(grep -c '' "$TMP/$name.log" || true)"
                tail -n 20 "$TMP/$name.log" >"$TMP/$name.logtail"
                fence "$TMP/$name.logtail"
            fi
            printf '\n</details>\n\n'
        done
        if [[ -s $TMP/orders.md ]]; then
            cat "$TMP/orders.md"
            printf '\nCommand: `bench/orders.sh` (called by this script; see its header).\n\n'
            if [[ -s $TMP/orders-hot.md ]]; then
                printf '### The hot-row case, not the target: every order on one product\n\n'
                sed -e 's/^## .*//' "$TMP/orders-hot.md"
                printf '\nCommand: `PRODUCTS=1 bench/orders.sh`.\n\n'
            fi
            # A pointer, not a copy: the analysis is kept in one place and outlives any run.
            printf 'Where an order'"'"'s time goes, what was changed for it and the profiles before and after: `bench/order-anatomy.md`.\n\n'
        fi
        if [[ -s $ROOT/docs/BENCHMARKS-live-updates.md && ${SKIP_WS:-0} != 1 ]]; then
            printf '## WebSocket fan-out (bench/ws.sh, same run)\n\n'
            # Its headings one level down, so they nest under this one.
            sed -e 's/^# .*//' -e 's/^#/##/' "$ROOT/docs/BENCHMARKS-live-updates.md"
        else
            printf '## WebSocket fan-out\n\nNot run this time (SKIP_WS=1); see docs/BENCHMARKS-live-updates.md.\n'
        fi
    } >"$out"

    log "results: bare $b_rps req/s (p99 $b_p99 ms); cache on $c_rps req/s = ${c_pct}% (p99 $c_p99 ms); cache off $u_rps req/s = ${u_pct}% (p99 $u_p99 ms)${r_pct:+; Redis limiter $r_rps req/s = ${r_pct}% (p99 $r_p99 ms, mode $SHARED_MODE)}"
    log "target: ${verdict//\*/}"
}

# --- main -----------------------------------------------------------------------------------

# run_storefront NAME ADDR [EXTRA_ENV...]: start `storefront serve`, wait for /readyz.
run_storefront() {
    local name=$1 addr=$2
    shift 2
    require_free "$addr"
    log "$name: starting storefront on $addr $*"
    start_bg "$TMP/$name.log" env -i PATH="$PATH" DATABASE_URL="sqlite://$TMP/bench.db" BIND_ADDR="$addr" \
        "${SERVER_SETTINGS[@]}" JWT_SECRET="$BENCH_JWT_SECRET" "$@" "$BIN/storefront" serve
    wait_ready "http://$addr/readyz" "$STARTED_PID" "$TMP/$name.log"
}

# start_redis: a private redis-server on REDIS_ADDR (nothing persisted), ready to answer PING.
start_redis() {
    require_free "$REDIS_ADDR"
    log "redis: starting redis-server on $REDIS_ADDR"
    start_bg "$TMP/redis-server.log" redis-server --bind "${REDIS_ADDR%:*}" --port "${REDIS_ADDR##*:}" \
        --save '' --appendonly no --dir "$TMP"
    local i
    for ((i = 0; i < READY_TIMEOUT_S * 10; i++)); do
        if [[ $(redis-cli -h "${REDIS_ADDR%:*}" -p "${REDIS_ADDR##*:}" ping 2>/dev/null) == PONG ]]; then
            return 0
        fi
        sleep 0.1
    done
    die "redis-server did not answer on $REDIS_ADDR within ${READY_TIMEOUT_S}s: $(tail -n 5 "$TMP/redis-server.log")"
}

# The limiter's backend as /metrics says (redis or local).
limiter_backend() {
    # Read the page whole first: `curl | grep -q` under pipefail fails whenever grep stops
    # reading at the match before curl has written the rest (SIGPIPE).
    local page
    page=$(curl -fsS --max-time 5 "http://$1/metrics" || true)
    if grep -q '^storefront_rate_limiter_backend{backend="redis"} 1' <<<"$page"; then
        echo redis
    else
        echo "local (fell back: not a valid run)"
    fi
}

# Start to ready on a fresh SQLite file (READY_S), then idle RSS (IDLE_RSS_MB).
measure_start_and_rss() {
    require_free "$FRESH_ADDR"
    local started ready pid i
    started=$(date +%s.%N)
    start_bg "$TMP/fresh.log" env -i PATH="$PATH" DATABASE_URL="sqlite://$TMP/fresh.db" BIND_ADDR="$FRESH_ADDR" \
        "${SERVER_SETTINGS[@]}" JWT_SECRET="$BENCH_JWT_SECRET" "$BIN/storefront" serve
    pid=$STARTED_PID
    for ((i = 0; i < READY_TIMEOUT_S * 100; i++)); do
        if curl -fs -o /dev/null --max-time 1 "http://$FRESH_ADDR/readyz"; then break; fi
        kill -0 "$pid" 2>/dev/null || die "storefront exited before it was ready: $(tail -n 5 "$TMP/fresh.log")"
        sleep 0.01
    done
    ready=$(date +%s.%N)
    READY_S=$(python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.3f}")' "$started" "$ready")
    sleep 2
    IDLE_RSS_MB=$(awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
    log "start to ready ${READY_S} s, idle RSS ${IDLE_RSS_MB} MB"
    stop_pid "$pid"
}

main() {
    cd "$ROOT"
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    local tool
    for tool in cargo curl python3 git; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
    done
    local packages=()
    command -v wrk >/dev/null 2>&1 || packages+=(wrk)
    if [[ ${SKIP_REDIS:-0} != 1 ]] && ! command -v redis-server >/dev/null 2>&1; then
        packages+=(redis-server)
    fi
    if ((${#packages[@]})); then
        log "installing ${packages[*]}"
        local sudo=()
        if [[ $EUID -ne 0 ]]; then sudo=(sudo); fi
        "${sudo[@]}" apt-get update
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${packages[@]}"
    fi
    ((${#BENCH_JWT_SECRET} == 40)) || die "BENCH_JWT_SECRET must be 40 characters"

    RUN_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
    MACHINE_CORES=$(nproc)
    MACHINE_KERNEL=$(uname -r)
    MACHINE_CPU=$({ grep -m1 -E '^model name' /proc/cpuinfo || true; } | cut -d: -f2- | sed 's/^ *//')
    MACHINE_CPU=${MACHINE_CPU:-unknown CPU}
    GIT_COMMIT=$(git rev-parse --short HEAD)
    GIT_DIRTY=""
    if [[ -n $(git status --porcelain --untracked-files=no -- . ':!docs/BENCHMARKS.md' ':!docs/BENCHMARKS-live-updates.md' ':!docs/benchmarks') ]]; then
        GIT_DIRTY=" (plus uncommitted changes)"
    fi
    RUSTC_VERSION=$(rustc --version 2>/dev/null || echo "rustc (unknown)")
    WRK_VERSION=$({ wrk -v 2>&1 || true; } | head -n1 | cut -d' ' -f1-2)

    log "building (release)"
    local profile_flag=--release
    [[ $PROFILE == release ]] || profile_flag=--profile=dev
    [[ $PROFILE == release || $PROFILE == debug ]] || die "PROFILE is release or debug"
    cargo build "$profile_flag" --bin storefront --example bare --example db_read
    LOAD_BEFORE=$(uptime | sed 's/.*load/load/')

    TMP=$(mktemp -d "${TMPDIR:-/tmp}/storefront-bench.XXXXXX")
    log "database in $TMP"
    env -i PATH="$PATH" DATABASE_URL="sqlite://$TMP/bench.db" "$BIN/storefront" user create \
        --email "$ADMIN_EMAIL" --password "$ADMIN_PASSWORD" --role admin >"$TMP/user.log" 2>&1 ||
        {
            cat "$TMP/user.log" >&2
            die "could not create the admin user"
        }

    # (a) the HTTP ceiling
    require_free "$BARE_ADDR"
    log "bare: starting on $BARE_ADDR"
    start_bg "$TMP/bare.log" "$BIN/examples/bare" "$BARE_ADDR"
    local bare_pid=$STARTED_PID
    wait_ready "http://$BARE_ADDR/bare" "$bare_pid" "$TMP/bare.log"
    measure bare "http://$BARE_ADDR/bare"
    stop_pid "$bare_pid"

    # (b) cache on (default settings)
    run_storefront cached "$CACHED_ADDR"
    local cached_pid=$STARTED_PID token
    token=$(curl -fsS --max-time 10 -H 'Content-Type: application/json' \
        -d "{\"email\":\"$ADMIN_EMAIL\",\"password\":\"$ADMIN_PASSWORD\"}" \
        "http://$CACHED_ADDR/api/v1/auth/login" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])') || die "admin login failed"
    PRODUCT_ID=$(curl -fsS --max-time 10 -H 'Content-Type: application/json' -H "Authorization: Bearer $token" \
        -d "$PRODUCT_BODY" "http://$CACHED_ADDR/api/v1/products" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])') || die "creating the product failed"
    log "product $PRODUCT_ID"
    measure cached "http://$CACHED_ADDR/api/v1/products/$PRODUCT_ID"
    scrape_counters "$CACHED_ADDR" >"$TMP/cached.counters"
    stop_pid "$cached_pid"

    # (f) cache on, limits shared through Redis
    SHARED_MODE="not run"
    if [[ ${SKIP_REDIS:-0} != 1 ]]; then
        start_redis
        local redis_pid=$STARTED_PID
        run_storefront shared "$SHARED_ADDR" RATE_LIMIT_REDIS_URL="redis://$REDIS_ADDR"
        local shared_pid=$STARTED_PID
        measure shared "http://$SHARED_ADDR/api/v1/products/$PRODUCT_ID"
        SHARED_MODE=$(limiter_backend "$SHARED_ADDR")
        scrape_counters "$SHARED_ADDR" >"$TMP/shared.counters"
        stop_pid "$shared_pid"
        stop_pid "$redis_pid"
    fi

    # (c) cache off
    run_storefront uncached "$UNCACHED_ADDR" CACHE_CAPACITY=0
    local uncached_pid=$STARTED_PID
    measure uncached "http://$UNCACHED_ADDR/api/v1/products/$PRODUCT_ID"
    scrape_counters "$UNCACHED_ADDR" >"$TMP/uncached.counters"
    stop_pid "$uncached_pid"

    # (d), (e): the same product read two ways, one process, the same SQLite file
    require_free "$DBREAD_ADDR"
    log "db_read: starting on $DBREAD_ADDR"
    start_bg "$TMP/dbread.log" "$BIN/examples/db_read" "sqlite://$TMP/bench.db" "$DBREAD_ADDR"
    local dbread_pid=$STARTED_PID
    wait_ready "http://$DBREAD_ADDR/actor/$PRODUCT_ID" "$dbread_pid" "$TMP/dbread.log"
    measure block "http://$DBREAD_ADDR/block/$PRODUCT_ID"
    measure actor "http://$DBREAD_ADDR/actor/$PRODUCT_ID"
    stop_pid "$dbread_pid"

    measure_start_and_rss

    ORDERS_MEASURED="not run (SKIP_ORDERS=1 or no PostgreSQL)" ORDERS_MET="not measured"
    if [[ ${SKIP_ORDERS:-0} != 1 ]] && command -v pgbench >/dev/null && psql "${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}" -qAtc 'SELECT 1' >/dev/null 2>&1; then
        log "orders: bench/orders.sh"
        "$ROOT/bench/orders.sh" "$TMP/orders.md"
        local summary
        summary=$(grep '^ORDERS_SUMMARY' "$TMP/orders.md" || true)
        IFS=$'\t' read -r _ o_rps o_pg o_ratio ORDERS_MET o_5xx o_breaks <<<"$summary"
        ORDERS_MEASURED="$o_rps orders/s vs $o_pg tps = ${o_ratio}%; 5xx $o_5xx; invariant breaks $o_breaks"
        sed -i '/^ORDERS_\(SUMMARY\|CPU\)/d' "$TMP/orders.md"
        log "orders, hot row: PRODUCTS=1 bench/orders.sh"
        PRODUCTS=1 "$ROOT/bench/orders.sh" "$TMP/orders-hot.md"
        sed -i '/^ORDERS_\(SUMMARY\|CPU\)/d' "$TMP/orders-hot.md"
    fi

    if [[ ${SKIP_WS:-0} != 1 ]]; then
        log "live updates: bench/ws.sh"
        "$ROOT/bench/ws.sh"
    fi

    mkdir -p "$(dirname "$REPORT")"
    write_report "$TMP/BENCHMARKS.md"
    mv "$TMP/BENCHMARKS.md" "$REPORT"
    log "wrote $REPORT"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
