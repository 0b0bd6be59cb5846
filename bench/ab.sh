#!/usr/bin/env bash
# A/B of the cached `GET /api/v1/products/{id}` for two storefront binaries, with the bare
# actix-web server measured in the same round each time: RUNS rounds of bare → A → B
# (B → A on even rounds, so neither always runs right after bare), each wrk -t2 -c64,
# 3 s warm-up then DURATION measured; `uptime` before each round. Each binary serves its
# own fresh SQLite file with one product. Prints one line per measurement and a summary.
#
# Usage: bench/ab.sh A_BINARY B_BINARY [RUNS]   (default 3 rounds; needs wrk, curl, python3,
#        target/release/examples/bare). AB_PORT_BASE=N puts the servers on N, N+1, N+2
#        (default 18095); DURATION (default 15s).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
A_BIN=$(realpath "${1:?usage: bench/ab.sh A_BINARY B_BINARY [RUNS]}")
B_BIN=$(realpath "${2:?usage: bench/ab.sh A_BINARY B_BINARY [RUNS]}")
RUNS=${3:-3}
PORT=${AB_PORT_BASE:-18095}
DURATION=${DURATION:-15s}
BARE_BIN=$ROOT/target/release/examples/bare
READY_TIMEOUT_S=30
STOP_TIMEOUT_S=15
TMP=""
PIDS=()
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

SETTINGS=(RUST_LOG=warn RATE_LIMIT_RPS=1000000 RATE_LIMIT_BURST=1000000
    JWT_SECRET=storefront-bench-jwt-secret-0123456789ab)

# wrk_figures FILE: "req/s p99_ms" from wrk --latency output.
wrk_figures() {
    python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
rps = re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)
value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", text).groups()
p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
print(rps, f"{p99:.2f}", non2xx.group(1) if non2xx else 0)
PY
}

# measure NAME URL: warm up, then record "NAME req/s p99 non2xx" to stdout and $TMP/results.
measure() {
    local name=$1 url=$2
    wrk -t2 -c64 -d3s "$url" >/dev/null
    wrk -t2 -c64 -d"$DURATION" --latency "$url" >"$TMP/$name.wrk"
    local figures
    figures=$(wrk_figures "$TMP/$name.wrk")
    echo "$ROUND $name $figures" | tee -a "$TMP/results"
}

# serve_product NAME BINARY ADDR: fresh database, admin, one product; PRODUCT_URL and SERVED_PID.
serve_product() {
    local name=$1 bin=$2 addr=$3 token product
    local env_=(env -i PATH="$PATH" DATABASE_URL="sqlite://$TMP/$name.db" BIND_ADDR="$addr" "${SETTINGS[@]}")
    printf 'ab-password\n' | "${env_[@]}" "$bin" user create --email ab@example.com --role admin --password-stdin \
        >/dev/null 2>&1 || die "$name: could not create the admin"
    require_free "$addr"
    start_bg "$TMP/$name.log" "${env_[@]}" "$bin" serve
    SERVED_PID=$STARTED_PID
    wait_ready "http://$addr/readyz" "$SERVED_PID" "$TMP/$name.log"
    token=$(curl -fsS -H 'content-type: application/json' -d '{"email":"ab@example.com","password":"ab-password"}' \
        "http://$addr/api/v1/auth/login" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    product=$(curl -fsS -H 'content-type: application/json' -H "Authorization: Bearer $token" \
        -d '{"name":"Bench widget","description":"A product for benchmarking","price_cents":1999,"stock":100}' \
        "http://$addr/api/v1/products" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    PRODUCT_URL="http://$addr/api/v1/products/$product"
}

main() {
    trap cleanup EXIT
    [[ -x $BARE_BIN ]] || die "build it first: cargo build --release --example bare"
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/storefront-ab.XXXXXX")
    echo "A: $A_BIN"
    echo "B: $B_BIN"
    local bare_addr=127.0.0.1:$PORT a_addr=127.0.0.1:$((PORT + 1)) b_addr=127.0.0.1:$((PORT + 2))
    require_free "$bare_addr"
    start_bg "$TMP/bare.log" "$BARE_BIN" "$bare_addr"
    local bare_pid=$STARTED_PID
    wait_ready "http://$bare_addr/bare" "$bare_pid" "$TMP/bare.log"
    serve_product a "$A_BIN" "$a_addr"
    local a_url=$PRODUCT_URL
    serve_product b "$B_BIN" "$b_addr"
    local b_url=$PRODUCT_URL
    # Only the server under load should compete with wrk: the others idle meanwhile.
    for ((ROUND = 1; ROUND <= RUNS; ROUND++)); do
        echo "round $ROUND: $(uptime | sed 's/.*load/load/')"
        measure bare "http://$bare_addr/bare"
        if ((ROUND % 2)); then
            measure A "$a_url"
            measure B "$b_url"
        else
            measure B "$b_url"
            measure A "$a_url"
        fi
    done
    echo "after: $(uptime | sed 's/.*load/load/')"
    python3 - "$TMP/results" <<'PY'
import collections, sys
rows = [line.split() for line in open(sys.argv[1])]
bare = {r[0]: float(r[2]) for r in rows if r[1] == "bare"}
ratios = collections.defaultdict(list)
for round_, name, rps, p99, non2xx in rows:
    if name != "bare":
        ratios[name].append((round_, 100 * float(rps) / bare[round_], float(p99), int(non2xx)))
for name in sorted(ratios):
    cells = ", ".join(f"r{r}: {pct:.1f}% (p99 {p99:.2f} ms)" for r, pct, p99, _ in ratios[name])
    bad = sum(n for *_, n in ratios[name])
    print(f"{name} / bare: {cells}; non-2xx {bad}")
PY
    stop_pid "$bare_pid"
}

main "$@"
