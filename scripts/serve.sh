#!/usr/bin/env bash
# `make serve`: flashclaim on this machine. Installs what is missing, starts a private Redis
# and Postgres (migrated), builds the components, serves the API on $LISTEN (default
# 127.0.0.1:3000) with `spin up` when Spin is installed or the bundled test host otherwise,
# and seeds a demo activity.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
listen=${LISTEN:-127.0.0.1:3000}
# The served app's stores live in .data/; the tests keep theirs in .data/test/.
export FLASHCLAIM_DATA="$root/.data"

step() { printf '\nserve: %s\n' "$*"; }
step "checking what is installed"
scripts/deps.sh
# Cargo prints what it compiles: the first build takes minutes, later ones seconds.
step "building the components (cargo, wasm32-wasip2)"
make --no-print-directory wasm
step "starting Redis and Postgres under .data/"
# A served app keeps its Redis data across restarts (AOF, fsync on every write).
[ -f .data/services.env ] || scripts/services.sh start --durable
# shellcheck disable=SC1091
. .data/services.env

# Secrets for local use: generated once, kept in .data/ (never committed).
secrets=.data/dev-secrets.env
if [ ! -f "$secrets" ]; then
  umask 077
  {
    echo "SPIN_VARIABLE_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    echo "SPIN_VARIABLE_TICKET_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  } >"$secrets"
fi
# Added separately so secrets files from before the drain token get one too.
if ! grep -q '^SPIN_VARIABLE_DRAIN_TOKEN=' "$secrets"; then
  (umask 077; echo "SPIN_VARIABLE_DRAIN_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >>"$secrets")
fi
# Added separately so secrets files from before the operator account get one too.
if ! grep -q '^FLASHCLAIM_DEV_ADMIN_PASSWORD=' "$secrets"; then
  (umask 077; echo "FLASHCLAIM_DEV_ADMIN_PASSWORD=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')" >>"$secrets")
fi
set -a
# shellcheck disable=SC1090
. "$secrets"
SPIN_VARIABLE_REDIS_ADDRESS=redis://127.0.0.1:$REDIS_PORT
SPIN_VARIABLE_REDIS_HOST=127.0.0.1:$REDIS_PORT
SPIN_VARIABLE_PG_ADDRESS=postgres://postgres@127.0.0.1:$PG_PORT/flashclaim
SPIN_VARIABLE_PG_HOST=127.0.0.1:$PG_PORT
set +a

# Which manifest: spin.wasip3.toml on Spin 4.1 and later (WASIp3 claim and log-in), else
# spin.toml, which every Spin runs. Without the cron plugin, a ticker below drains.
if command -v spin >/dev/null 2>&1; then
  version=$(spin --version | awk '{print $2}')
  IFS=. read -r major minor _ <<<"$version"
  if [ "${major:-0}" -gt 4 ] || { [ "${major:-0}" -eq 4 ] && [ "${minor:-0}" -ge 1 ]; }; then
    manifest=spin.wasip3.toml
  else
    manifest=spin.toml
  fi
  step "Spin $version: serving $manifest"
  if [ "$manifest" = spin.wasip3.toml ] && spin plugins list --installed 2>/dev/null | grep -q '^trigger-cron'; then
    spin up -f "$manifest" --listen "$listen" &
  else
    # HTTP components only; the drain is driven through its route with the drain token.
    spin up -f "$manifest" --listen "$listen" -c activity -c claim -c auth -c sessions -c ticket -c admin -c drain -c web &
    TICKER=1
  fi
else
  # The dev profile optimises dependencies (wasmtime, Cranelift), which is what matters here,
  # and shares its build with the tests.
  step "building the test host (Spin is not installed)"
  cargo build -p flashclaim-core -p spin-test-host -p flashclaim-tests --bins
  target/debug/spin-test-host --manifest spin.wasip3.toml --listen "$listen" &
fi
server=$!
ticker=""
if [ -n "${TICKER:-}" ]; then
  # What a host without the cron plugin runs (DEPLOY.md): one drain call a second.
  while sleep 1; do
    curl -s -o /dev/null -m 25 -X POST -H "authorization: Bearer $SPIN_VARIABLE_DRAIN_TOKEN" "http://$listen/admin/drain" || true
  done &
  ticker=$!
fi
trap 'kill $server $ticker 2>/dev/null' EXIT INT TERM

step "building the set-up tools, waiting for the app"
cargo build -q -p flashclaim-core -p spin-test-host -p flashclaim-tests --bins
token() { target/debug/flashclaim-token "$@"; }
# The operator account: FLASHCLAIM_ADMIN_USERNAME / FLASHCLAIM_ADMIN_PASSWORD when given,
# else "operator" with the generated password kept in .data/dev-secrets.env.
export FLASHCLAIM_ADMIN_USERNAME=${FLASHCLAIM_ADMIN_USERNAME:-operator}
export FLASHCLAIM_ADMIN_PASSWORD=${FLASHCLAIM_ADMIN_PASSWORD:-${FLASHCLAIM_DEV_ADMIN_PASSWORD:-}}
target/debug/flashclaim-operator "$SPIN_VARIABLE_PG_ADDRESS"
for _ in $(seq 1 150); do
  curl -s -o /dev/null "http://$listen/healthz" && break
  sleep 0.2
done
login=$(printf '{"username":"%s","password":"%s"}' "$FLASHCLAIM_ADMIN_USERNAME" "$FLASHCLAIM_ADMIN_PASSWORD")
admin=$(curl -s -X POST "http://$listen/api/sessions" -H 'content-type: application/json' -d "$login" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')

if [ -z "$(psql "$SPIN_VARIABLE_PG_ADDRESS" -qtAX -c "SELECT id FROM activities WHERE name = 'Demo: free ride' LIMIT 1")" ]; then
  now=$(date -u +%s)
  body=$(printf '{"name":"Demo: free ride","description":"A demo activity seeded by make serve","starts_at":"%s","ends_at":"%s","stock_total":100,"per_user_limit":1}' \
    "$(date -u -d "@$now" +%Y-%m-%dT%H:%M:%SZ)" "$(date -u -d "@$((now + 7 * 86400))" +%Y-%m-%dT%H:%M:%SZ)")
  curl -s -o /dev/null -X POST "http://$listen/admin/activities" -H "authorization: Bearer $admin" -d "$body"
fi
id=$(psql "$SPIN_VARIABLE_PG_ADDRESS" -qtAX -c "SELECT id FROM activities WHERE name = 'Demo: free ride' LIMIT 1")
# Publishing is idempotent, and after a Redis that lost its data it reloads the activity
# from what Postgres recorded.
curl -s -o /dev/null -X POST "http://$listen/admin/activities/$id/publish" -H "authorization: Bearer $admin"

cat <<MSG

flashclaim is serving on http://$listen (Redis :$REDIS_PORT, Postgres :$PG_PORT, data in .data/)

  The H5 app (users):          http://$listen/
  The operator console:        http://$listen/console/
                               (log in as $FLASHCLAIM_ADMIN_USERNAME; the password:
                                grep ADMIN_PASSWORD .data/dev-secrets.env)

Demo activity $id. The API:

  curl http://$listen/api/activities/$id
  curl -X POST http://$listen/api/activities/$id/claims -H "authorization: Bearer $(token demo-user)"

Operator: $FLASHCLAIM_ADMIN_USERNAME (password in .data/dev-secrets.env unless you set
FLASHCLAIM_ADMIN_PASSWORD); its token: $admin
${TICKER:+No cron plugin: a ticker in this script calls POST /admin/drain every second with the drain token.}
Stop with Ctrl-C (Redis and Postgres keep running: scripts/services.sh stop).
MSG
wait $server
