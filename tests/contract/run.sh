#!/usr/bin/env bash
# The contract, checked by a machine: schemathesis (pinned below, installed into a
# virtualenv) runs every check against a real `storefront serve` on SQLite and, when
# TEST_DATABASE_URL is set, on PostgreSQL; once with an admin's token and once with a
# plain user's. Any failure fails the run. It tests whatever /openapi.json lists.
#
#   tests/contract/run.sh                    # uses target/debug/storefront (built if needed)
#   CONTRACT_EXAMPLES=50 tests/contract/run.sh   # more examples per operation
set -euo pipefail
cd "$(dirname "$0")/../.."

SCHEMATHESIS_VERSION=4.32.5
VENV=${CONTRACT_VENV:-.venv-ci}
EXAMPLES=${CONTRACT_EXAMPLES:-30}

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

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

token_of() { # email password
  curl -sf "$BASE/api/v1/auth/login" -H 'content-type: application/json' \
    -d "{\"email\":\"$1\",\"password\":\"$2\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
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

  DATABASE_URL=$url "$BIN" user create --email contract-admin@example.com --password 'contract admin pw' --role admin >/dev/null
  curl -sf "$BASE/api/v1/auth/register" -H 'content-type: application/json' \
    -d '{"email":"contract-user@example.com","password":"contract user pw","name":"Contract User"}' >/dev/null
  # The user that user-management writes aim at (see schemathesis.toml).
  CONTRACT_VICTIM_ID=$(curl -sf "$BASE/api/v1/auth/register" -H 'content-type: application/json' \
    -d '{"email":"contract-victim@example.com","password":"contract victim pw","name":"Victim"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  export CONTRACT_VICTIM_ID
  local admin user
  admin=$(token_of contract-admin@example.com 'contract admin pw')
  user=$(token_of contract-user@example.com 'contract user pw')

  local role token status=0
  for role in admin user; do
    token=$admin; [ "$role" = user ] && token=$user
    echo "contract: schemathesis on $name as $role"
    if "$VENV/bin/schemathesis" --config-file tests/contract/schemathesis.toml run "$BASE/openapi.json" \
      --checks all --max-examples "$EXAMPLES" --phases examples,coverage,fuzzing --workers 2 \
      --seed 1 --no-color --suppress-health-check all --request-timeout 10 \
      -H "Authorization: Bearer $token"; then
      PASSED=$((PASSED + 1))
    else
      FAILED=$((FAILED + 1)); status=1
    fi
  done
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=
  return $status
}

PASSED=0
FAILED=0
failed=0
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
echo "contract: $PASSED passed, $FAILED failed"
[ "$failed" = 0 ] || exit 1
