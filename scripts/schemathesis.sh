#!/usr/bin/env bash
# Schemathesis (from PyPI) against docs/openapi.json and the running app on the test host:
# no 5xx, and every response matches the document. Needs the services (make services-start)
# and the built components; makes its own database, Redis keyspace and tokens.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck disable=SC1091
. "${FLASHCLAIM_DATA:-.data/test}/services.env"

venv=.data/venv
if [ ! -x "$venv/bin/st" ]; then
  python3 -m venv "$venv" # python3-venv comes from scripts/deps.sh
  "$venv/bin/pip" install -q "schemathesis==4.32.5"
fi

db=flashclaim_schema
psql "postgres://postgres@127.0.0.1:$PG_PORT/postgres" -qtAX \
  -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db TEMPLATE flashclaim_template" >/dev/null
redis-cli -p "$REDIS_PORT" -n 255 FLUSHDB >/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export SPIN_VARIABLE_JWT_SECRET=schema-jwt-secret SPIN_VARIABLE_TICKET_SECRET=schema-ticket-secret
export SPIN_VARIABLE_REDIS_ADDRESS=redis://127.0.0.1:$REDIS_PORT/255 SPIN_VARIABLE_REDIS_HOST=127.0.0.1:$REDIS_PORT
export SPIN_VARIABLE_PG_ADDRESS=postgres://postgres@127.0.0.1:$PG_PORT/$db SPIN_VARIABLE_PG_HOST=127.0.0.1:$PG_PORT
export SPIN_VARIABLE_CLAIM_RATE_LIMIT=0
cargo build -q -p flashclaim-core -p spin-test-host -p flashclaim-tests --bins
target/debug/spin-test-host --manifest spin.wasip3.toml --listen "127.0.0.1:$port" >.data/schemathesis-host.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 150); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.2; done

admin=$(target/debug/flashclaim-token operator admin)
# Something for the generated ids to find: a published activity with a claim.
now=$(date -u +%s)
body=$(printf '{"name":"Schema","starts_at":"%s","ends_at":"%s","stock_total":1000,"per_user_limit":5}' \
  "$(date -u -d "@$((now - 60))" +%Y-%m-%dT%H:%M:%SZ)" "$(date -u -d "@$((now + 86400))" +%Y-%m-%dT%H:%M:%SZ)")
curl -s -o /dev/null -X POST "http://127.0.0.1:$port/admin/activities" -H "authorization: Bearer $admin" -d "$body"
curl -s -o /dev/null -X POST "http://127.0.0.1:$port/admin/activities/1/publish" -H "authorization: Bearer $admin"

# Every operation as the operator (the token opens every route), a bounded number of cases.
"$venv/bin/st" run docs/openapi.json \
  --url "http://127.0.0.1:$port" \
  --header "Authorization: Bearer $admin" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-25}" \
  --seed 1 \
  --no-color \
  "$@"
