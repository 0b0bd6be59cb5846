#!/usr/bin/env bash
# Order placement on PostgreSQL against pgbench's TPC-B-like script on the same server.
# Called by bench/run.sh (or alone); writes a Markdown fragment to $1 (default stdout).
#
# Storefront: USERS users with money, PRODUCTS products with plenty of stock, wrk with
# CONNECTIONS connections for DURATION, each request `POST /api/v1/orders` as the next user
# with a fresh Idempotency-Key and the next product (bench/orders.lua). PRODUCTS defaults
# to 8, the number of branch rows pgbench's scale 8 spreads its updates over; PRODUCTS=1
# measures the hot-row case, every order queued on one product's row. Afterwards the invariants are checked in
# SQL: stock taken == items ordered, money debited == order totals, no negative balance.
# pgbench: scale 8, `-c 8 -j 2` (the issue's reference) and `-c CONNECTIONS -j 2`.
#
# Needs: target/release/storefront (run.sh builds it), wrk, pgbench, psql, curl, python3.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-/dev/stdout}
PG=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_BASE=${PG%/*}
DB=storefront_orders_bench
PGBENCH_DB=storefront_pgbench
ADDR=${ORDERS_ADDR:-127.0.0.1:18096}
USERS=${USERS:-64}
PRODUCTS=${PRODUCTS:-8}
CONNECTIONS=${ORDER_CONNECTIONS:-32}
DURATION=${ORDER_DURATION:-15s}
STOCK=100000000
DEPOSIT=100000000
READY_TIMEOUT_S=30
STOP_TIMEOUT_S=15
BENCH_JWT_SECRET=storefront-bench-jwt-secret-0123456789ab
BIN=${STOREFRONT_BIN:-target/release/storefront}
SETTINGS=(RUST_LOG=warn RATE_LIMIT_RPS=1000000 RATE_LIMIT_BURST=1000000 AUTH_RATE_LIMIT_PER_MINUTE=100000)
# Executors: each spends most of an order waiting on round trips to PostgreSQL, so the
# default 4 leaves these 2 cores idle (measured in 2 alternated rounds only: 8 gave +28-31%
# orders/s over 4; 16 was no better than 8 in one of the two). The pool follows (DB_WORKERS + 2).
SETTINGS+=("DB_WORKERS=${DB_WORKERS:-8}")

TMP=""
PIDS=()
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

sql() { psql "$PG_BASE/$DB" -Atqc "$1"; }
# Busy ticks of all CPUs (user, nice, system, irq, softirq) and steal, from /proc/stat.
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $9 }' /proc/stat; }
# utime + stime of one process, in ticks.
process_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

main() {
    cd "$ROOT"
    trap cleanup EXIT
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/storefront-orders.XXXXXX")
    psql "$PG" -qc "DROP DATABASE IF EXISTS $DB" -c "DROP DATABASE IF EXISTS $PGBENCH_DB" 2>/dev/null
    local env_=(env -i PATH="$PATH" DATABASE_URL="$PG_BASE/$DB" BIND_ADDR="$ADDR" "${SETTINGS[@]}" JWT_SECRET="$BENCH_JWT_SECRET")
    printf 'bench-admin-password\n' | "${env_[@]}" "$BIN" user create --email admin@bench.example \
        --role admin --password-stdin >"$TMP/user.log" 2>&1 || die "admin: $(cat "$TMP/user.log")"
    require_free "$ADDR"
    start_bg "$TMP/server.log" "${env_[@]}" "$BIN" serve
    local pid=$STARTED_PID
    wait_ready "http://$ADDR/readyz" "$pid" "$TMP/server.log"
    log "orders: creating $USERS users"
    python3 - "$ADDR" "$USERS" "$STOCK" "$DEPOSIT" "$TMP/tokens.lua" "$PRODUCTS" <<'PY'
import json, sys, urllib.request
addr, users, stock, deposit, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
products = int(sys.argv[6])
def call(method, path, body=None, token=None, key=None):
    req = urllib.request.Request(f"http://{addr}/api/v1{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("content-type", "application/json")
    if token: req.add_header("authorization", f"Bearer {token}")
    if key: req.add_header("idempotency-key", key)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)
admin = call("POST", "/auth/login", {"email": "admin@bench.example", "password": "bench-admin-password"})["access_token"]
product_ids = [call("POST", "/products", {"name": f"Bench widget {n}", "price_cents": 1, "stock": stock}, admin)["id"]
               for n in range(products)]
tokens = []
for n in range(users):
    email = f"user{n}@bench.example"
    call("POST", "/auth/register", {"email": email, "password": "bench user password", "name": f"User {n}"})
    token = call("POST", "/auth/login", {"email": email, "password": "bench user password"})["access_token"]
    me = call("GET", "/users/me", token=token)["id"]
    call("POST", f"/accounts/{me}/deposits", {"amount_cents": deposit}, admin, key=f"deposit-{n}")
    tokens.append(token)
with open(out, "w") as f:
    f.write("products = {%s}\ntokens = {%s}\n" % (",".join(json.dumps(p) for p in product_ids),
                                                 ",".join(json.dumps(t) for t in tokens)))
PY
    cat "$TMP/tokens.lua" "$ROOT/bench/orders.lua" >"$TMP/orders.lua"
    log "orders: wrk -c$CONNECTIONS -d$DURATION POST /api/v1/orders"
    # CPU per order, which a busy host bends less than orders/s: the whole machine's busy
    # ticks (wrk included, `steal` apart) and the server's own, across the wrk run.
    local machine_before server_before machine_after server_after
    machine_before=$(machine_ticks)
    server_before=$(process_ticks "$pid")
    wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$TMP/orders.lua" "http://$ADDR/api/v1/orders" >"$TMP/orders.wrk"
    machine_after=$(machine_ticks)
    server_after=$(process_ticks "$pid")
    cat "$TMP/orders.wrk" >&2
    stop_pid "$pid"
    # Invariants, in SQL, after the server stopped.
    local orders items taken debited negative totals
    orders=$(sql "SELECT count(*) FROM orders")
    items=$(sql "SELECT coalesce(sum(quantity), 0) FROM order_items")
    taken=$(sql "SELECT $PRODUCTS::bigint * $STOCK - sum(stock) FROM products")
    totals=$(sql "SELECT coalesce(sum(total_cents), 0) FROM orders")
    debited=$(sql "SELECT $USERS::bigint * $DEPOSIT - sum(balance_cents) FROM accounts WHERE user_id IN (SELECT id FROM users WHERE email LIKE 'user%')")
    negative=$(sql "SELECT count(*) FROM accounts WHERE balance_cents < 0")
    local breaks=0
    [[ $items == "$taken" ]] || breaks=$((breaks + 1))
    [[ $totals == "$debited" ]] || breaks=$((breaks + 1))
    [[ $negative == 0 ]] || breaks=$((breaks + 1))
    log "orders: $orders committed; items $items vs stock taken $taken; totals $totals vs debited $debited; negative $negative"

    log "pgbench: initialising scale 8"
    psql "$PG" -qc "CREATE DATABASE $PGBENCH_DB"
    pgbench -q -i -s 8 "$PG_BASE/$PGBENCH_DB" >"$TMP/pgbench-init.log" 2>&1
    pgbench -c 8 -j 2 -T "${DURATION%s}" "$PG_BASE/$PGBENCH_DB" >"$TMP/pgbench-8.log" 2>&1
    pgbench -c "$CONNECTIONS" -j 2 -T "${DURATION%s}" "$PG_BASE/$PGBENCH_DB" >"$TMP/pgbench-$CONNECTIONS.log" 2>&1
    psql "$PG" -qc "DROP DATABASE IF EXISTS $PGBENCH_DB" -c "DROP DATABASE IF EXISTS $DB"

    python3 - "$TMP" "$CONNECTIONS" "$breaks" "$orders" "$USERS" "$PRODUCTS" "$(getconf CLK_TCK)" \
        "$machine_before" "$machine_after" "$server_before" "$server_after" >"$OUT" <<'PY'
import re, sys
tmp, conns, breaks, orders, users, products = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
tick_ms = 1000 / int(sys.argv[7])
(busy0, steal0), (busy1, steal1) = (map(int, sys.argv[n].split()) for n in (8, 9))
machine_ms = (busy1 - busy0) * tick_ms / max(int(orders), 1)
server_ms = (int(sys.argv[11]) - int(sys.argv[10])) * tick_ms / max(int(orders), 1)
steal_share = 100 * (steal1 - steal0) / max(busy1 - busy0 + steal1 - steal0, 1)
wrk = open(f"{tmp}/orders.wrk").read()
rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", wrk).group(1))
p99 = re.search(r"^\s+99%\s+(\S+)", wrk, re.M).group(1)
five = re.search(r"5xx responses: (\d+)", wrk)
five = int(five.group(1)) if five else 0
non2 = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", wrk)
non2 = int(non2.group(1)) if non2 else 0
def tps(name):
    text = open(f"{tmp}/{name}").read()
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", text) or re.search(r"tps = ([0-9.]+)", text)
    return float(m.group(1)), text
t8, raw8 = tps("pgbench-8.log")
tn, rawn = tps(f"pgbench-{conns}.log")
best = max(t8, tn)
ratio = 100 * rps / best
met = "met" if ratio >= 40 and five == 0 and breaks == 0 else "**not met**"
print(f"""## Order placement on PostgreSQL vs pgbench

| | per second | p99 | 5xx | non-2xx | invariant breaks |
|---|---:|---:|---:|---:|---:|
| storefront `POST /api/v1/orders`, {conns} connections over {users} users and {products} product(s) | {rps:.1f} | {p99} | {five} | {non2} | {breaks} |
| pgbench TPC-B-like, scale 8, `-c 8 -j 2` | {t8:.1f} tps | | | | |
| pgbench TPC-B-like, scale 8, `-c {conns} -j 2` | {tn:.1f} tps | | | | |

CPU per order, over the wrk run: {machine_ms:.3f} ms of the whole machine (storefront, PostgreSQL, wrk), of which storefront {server_ms:.3f} ms; steal {steal_share:.1f}% of the busy time.

ORDERS_CPU\t{machine_ms:.3f}\t{server_ms:.3f}\t{steal_share:.1f}

Orders committed: {orders}. Ratio to the better pgbench figure: **{ratio:.1f}%** (target ≥ 40%, zero 5xx, zero invariant breaks): {met}.

ORDERS_SUMMARY\t{rps:.1f}\t{best:.1f}\t{ratio:.1f}\t{met}\t{five}\t{breaks}

<details><summary>raw: wrk (orders), pgbench</summary>

```text
{wrk}
{raw8}
{rawn}
```
</details>
""")
PY
}

main "$@"
