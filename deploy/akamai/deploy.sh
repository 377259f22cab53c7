#!/usr/bin/env bash
# Akamai Functions: deploys spin.toml (WASIp2 components, HTTP triggers only: the platform
# runs no custom trigger) with its variables, and schedules the drain with the platform's
# cron, which sends an HTTP request to a path and query (no header), hence `?token=`.
#
# Limits that matter (Akamai's quotas page): 128 MiB per request, 30 s per request (one
# drain call stops taking batches after 20 s), 5-field crontab in UTC, so the drain runs
# once a minute and the claim log waits up to a minute for Postgres: GET /api/tickets lags
# that much; claims, stock and ticket reads by code do not (they are in Redis).
#
# Every value comes from the environment, never from this file:
#   FLASHCLAIM_JWT_SECRET FLASHCLAIM_TICKET_SECRET FLASHCLAIM_DRAIN_TOKEN
#   FLASHCLAIM_PG_ADDRESS FLASHCLAIM_PG_HOST FLASHCLAIM_REDIS_ADDRESS FLASHCLAIM_REDIS_HOST
#   FLASHCLAIM_APP_NAME: on the first deploy only, the name of the app to create; later
#   deploys update the app this directory is linked to (and must pass the variables again)
#   deploy/akamai/deploy.sh                 # build, deploy, schedule the drain
#   deploy/akamai/deploy.sh --print-variables # the variable names it passes, one a line
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
MANIFEST=spin.toml
# Managed Redis and Postgres endpoints must be reachable from the platform (TLS where the
# provider offers it); the hosts are what allowed_outbound_hosts lets components reach.
VARIABLES="jwt_secret ticket_secret drain_token pg_address pg_host redis_address redis_host"
DRAIN_PATH=/admin/drain

if [ "${1:-}" = "--print-variables" ]; then
  printf '%s\n' $VARIABLES
  exit 0
fi

args=()
for name in $VARIABLES; do
  env_name="FLASHCLAIM_$(echo "$name" | tr '[:lower:]' '[:upper:]')"
  value=${!env_name:?"set $env_name"}
  args+=(--variable "$name=$value")
done

cd "$root"
make wasm
# Run the migrations first, once per release: scripts/migrate.sh "$FLASHCLAIM_PG_ADDRESS".
spin aka deploy --from "$MANIFEST" ${FLASHCLAIM_APP_NAME:+--create-name "$FLASHCLAIM_APP_NAME"} \
  --no-confirm "${args[@]}"
# The platform's cron (Tech Preview): one drain call a minute. The command's arguments
# have changed between plugin versions: check `spin aka cron create --help`.
spin aka cron create --from "$MANIFEST" --name flashclaim-drain --schedule "* * * * *" \
  --path-and-query "$DRAIN_PATH?token=$FLASHCLAIM_DRAIN_TOKEN"
