#!/usr/bin/env bash
# The contract, checked by a machine: schemathesis (pinned below, installed into a
# virtualenv) runs every check, in every phase (the document's examples, its boundary
# values, random data, and stateful sequences along its links), against a real
# `storefront serve` on SQLite and, when TEST_DATABASE_URL is set, on PostgreSQL; once with
# an admin's token and once with a plain user's. Any failure fails the run. It tests
# whatever /openapi.json lists; tests/contract/schemathesis.toml says what it expects.
#
#   tests/contract/run.sh                    # uses target/debug/storefront (built if needed)
#   CONTRACT_EXAMPLES=50 tests/contract/run.sh   # examples per operation in every phase
#                                                 # (default: as schemathesis.toml says)
set -euo pipefail
cd "$(dirname "$0")/../.."

SCHEMATHESIS_VERSION=4.32.5
VENV=${CONTRACT_VENV:-.venv-ci}
EXAMPLES=()
[ -n "${CONTRACT_EXAMPLES:-}" ] && EXAMPLES=(--max-examples "$CONTRACT_EXAMPLES")

# Python 3.11 trips over hypothesis' source inspection (SystemError: AST constructor
# recursion depth mismatch); a newer interpreter is used where there is one.
python_for_venv() {
  local candidate
  for candidate in python3.13 python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[23]*/bin/python3 python3; do
    if "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      echo "$candidate"; return
    fi
  done
  echo python3
}
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -qx "schemathesis, version $SCHEMATHESIS_VERSION"; then
  "$(python_for_venv)" -m venv --clear "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
cargo build --quiet --bin storefront
BIN=$PWD/target/debug/storefront

WORK=$(mktemp -d /tmp/storefront-contract.XXXXXX)
SERVER_PID=
PG_DB=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  [ -n "$PG_DB" ] && psql -q "$TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT

# What the run did to resources that exist (ids it created or found, along the links):
# each write to an id that answered 2xx, counted from the HAR report.
real_ids() { # report-dir
  python3 - "$1"/har-*.json <<'PY'
import collections, json, re, sys
uuid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
counts = collections.Counter()
for entry in json.load(open(sys.argv[1]))["log"]["entries"]:
    request, status = entry["request"], entry["response"]["status"]
    path = "/" + request["url"].split("?")[0].split("/", 3)[3]
    if request["method"] != "GET" and uuid.search(path) and 200 <= status < 300:
        counts[f'{request["method"]} {uuid.sub("{id}", path)}'] += 1
print(", ".join(f"{name} x{count}" for name, count in sorted(counts.items())) or "none")
PY
}

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

token_of() { # email password
  curl -sf "$BASE/api/v1/auth/login" -H 'content-type: application/json' \
    -d "{\"email\":\"$1\",\"password\":\"$2\"}" | json_field access_token
}

check_backend() { # name database-url
  local name=$1 url=$2 port
  port=$(free_port)
  BASE="http://127.0.0.1:$port"
  # Generous limits: the contract run must never exhaust a rate limit into failures.
  DATABASE_URL=$url BIND_ADDR=127.0.0.1:$port JWT_SECRET=contract-secret-contract-secret-0123456789 \
    JWT_TTL_SECONDS=3600 RATE_LIMIT_RPS=1000000 RATE_LIMIT_BURST=1000000 AUTH_RATE_LIMIT_PER_MINUTE=1000000 \
    RUST_LOG=error "$BIN" serve 2>"$WORK/$name.log" &
  SERVER_PID=$!
  for _ in $(seq 1 100); do curl -sf "$BASE/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "$BASE/readyz" >/dev/null || { cat "$WORK/$name.log"; echo "contract: $name server did not start"; exit 1; }

  local admin_id user_id
  admin_id=$(DATABASE_URL=$url "$BIN" user create --email contract-admin@example.com --password 'contract admin pw' \
    --role admin | json_field id)
  user_id=$(curl -sf "$BASE/api/v1/auth/register" -H 'content-type: application/json' \
    -d '{"email":"contract-user@example.com","password":"contract user pw","name":"Contract User"}' | json_field id)
  # The user that user-management writes aim at (see schemathesis.toml).
  CONTRACT_VICTIM_ID=$(curl -sf "$BASE/api/v1/auth/register" -H 'content-type: application/json' \
    -d '{"email":"contract-victim@example.com","password":"contract victim pw","name":"Victim"}' | json_field id)
  export CONTRACT_VICTIM_ID
  local admin user
  admin=$(token_of contract-admin@example.com 'contract admin pw')
  user=$(token_of contract-user@example.com 'contract user pw')
  # Money and a product, so that orders along the links (list products, order the first,
  # cancel it) succeed for both roles instead of stopping at 409.
  local id
  for id in "$admin_id" "$user_id"; do
    curl -sf "$BASE/api/v1/accounts/$id/deposits" -H 'content-type: application/json' -H "Authorization: Bearer $admin" \
      -d '{"amount_cents":1000000000000}' >/dev/null
  done
  local product token
  product=$(curl -sf "$BASE/api/v1/products" -H 'content-type: application/json' -H "Authorization: Bearer $admin" \
    -d '{"name":"Contract widget","price_cents":100,"stock":1000000000}' | json_field id)
  # An order each, so that the links from the order list (get, cancel the newest) start
  # from a real, paid order too.
  for token in "$user" "$admin"; do
    curl -sf "$BASE/api/v1/orders" -H 'content-type: application/json' -H "Authorization: Bearer $token" \
      -d "{\"items\":[{\"product_id\":\"$product\",\"quantity\":1}]}" >/dev/null
  done

  local role status=0
  # The user first: the only product is then the seeded one, so the user's orders along the
  # links (list products, order the first, cancel it) reach a product that is on sale.
  for role in user admin; do
    token=$admin; [ "$role" = user ] && token=$user
    echo "contract: schemathesis on $name as $role"
    local started=$SECONDS
    if "$VENV/bin/schemathesis" --config-file tests/contract/schemathesis.toml run "$BASE/openapi.json" \
      --checks all ${EXAMPLES[@]+"${EXAMPLES[@]}"} --phases examples,coverage,fuzzing,stateful --workers 2 \
      --seed 1 --no-color --suppress-health-check all --request-timeout 10 \
      --report har --report-dir "$WORK/$name-$role" -H "Authorization: Bearer $token"; then
      PASSED=$((PASSED + 1))
    else
      FAILED=$((FAILED + 1)); status=1
    fi
    echo "contract: $name as $role took $((SECONDS - started)) s; writes that reached a real id: $(real_ids "$WORK/$name-$role")"
  done
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=
  return $status
}

PASSED=0
FAILED=0
failed=0
RUNS_STARTED=$SECONDS
check_backend sqlite "sqlite://$WORK/contract.db" || failed=1
if [ -n "${TEST_DATABASE_URL:-}" ]; then
  PG_DB=storefront_contract_$$
  psql -q "$TEST_DATABASE_URL" -c "CREATE DATABASE $PG_DB" >/dev/null
  check_backend postgres "${TEST_DATABASE_URL%/*}/$PG_DB" || failed=1
elif [ "${REQUIRE_POSTGRES:-}" = 1 ]; then
  echo "contract: REQUIRE_POSTGRES=1 but TEST_DATABASE_URL is not set"; exit 1
else
  echo "contract: SKIPPED PostgreSQL (set TEST_DATABASE_URL to run it)"
fi
echo "contract: $PASSED passed, $FAILED failed, in $((SECONDS - RUNS_STARTED)) s"
[ "$failed" = 0 ] || exit 1
