#!/usr/bin/env bash
# Profiles the cached `GET /api/v1/products/{id}` of one storefront binary with perf:
# context switches and CPU migrations per request (`perf stat`, the cost of thread hops)
# and a flat profile of the hottest symbols (`perf record`). Not part of run.sh's figures.
#
# Usage: bench/profile.sh [BINARY]   (default target/release/storefront; needs perf, wrk)
#        PROFILE_ADDR=HOST:PORT moves the server (default 127.0.0.1:18097)
#        PERF_DATA=FILE keeps the recording there (for `perf report -i FILE`)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-$ROOT/target/release/storefront}
ADDR=${PROFILE_ADDR:-127.0.0.1:18097}
READY_TIMEOUT_S=30
STOP_TIMEOUT_S=15
TMP=""
PIDS=()
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

main() {
    trap cleanup EXIT
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/storefront-profile.XXXXXX")
    local env_=(env -i PATH="$PATH" DATABASE_URL="sqlite://$TMP/p.db" BIND_ADDR="$ADDR" RUST_LOG=warn
        RATE_LIMIT_RPS=1000000 RATE_LIMIT_BURST=1000000 JWT_SECRET=storefront-bench-jwt-secret-0123456789ab)
    printf 'profile-password\n' | "${env_[@]}" "$BIN" user create --email p@example.com --role admin --password-stdin >/dev/null 2>&1
    require_free "$ADDR"
    start_bg "$TMP/server.log" "${env_[@]}" "$BIN" serve
    local pid=$STARTED_PID token product
    wait_ready "http://$ADDR/readyz" "$pid" "$TMP/server.log"
    token=$(curl -fsS -H 'content-type: application/json' -d '{"email":"p@example.com","password":"profile-password"}' \
        "http://$ADDR/api/v1/auth/login" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    product=$(curl -fsS -H 'content-type: application/json' -H "Authorization: Bearer $token" \
        -d '{"name":"Profiled","price_cents":1,"stock":1}' "http://$ADDR/api/v1/products" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    local url="http://$ADDR/api/v1/products/$product"
    wrk -t2 -c64 -d3s "$url" >/dev/null
    perf stat -e context-switches,cpu-migrations,task-clock -p "$pid" -o "$TMP/stat.txt" -- sleep 10 &
    local stat_pid=$!
    wrk -t2 -c64 -d10s "$url" >"$TMP/wrk.txt"
    wait "$stat_pid" || true
    perf record -F 999 -g -p "$pid" -o "$TMP/perf.data" -- sleep 8 >/dev/null 2>&1 &
    local record_pid=$!
    wrk -t2 -c64 -d8s "$url" >/dev/null
    wait "$record_pid" || true
    if [[ -n ${PERF_DATA:-} ]]; then cp "$TMP/perf.data" "$PERF_DATA"; fi
    local requests
    requests=$(awk '/requests in/ {print $1}' "$TMP/wrk.txt")
    echo "binary: $BIN"
    grep -E 'Requests/sec|99%' "$TMP/wrk.txt" || true
    awk -v n="$requests" '/context-switches|cpu-migrations/ {gsub(",", "", $1); printf "%s: %s (%.3f per request)\n", $2, $1, $1 / n}' "$TMP/stat.txt"
    grep -E 'task-clock' "$TMP/stat.txt" || true
    echo "hottest symbols (self time):"
    perf report -i "$TMP/perf.data" --stdio --no-children --sort sym 2>/dev/null | grep -E '^ +[0-9]' | head -60
}

main "$@"
