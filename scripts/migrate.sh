#!/usr/bin/env bash
# Applies migrations/*.sql in order to the database at $1 (a postgres:// URL), each once.
set -euo pipefail
url=${1:?usage: migrate.sh postgres://user@host:port/db}
dir="$(cd "$(dirname "$0")/.." && pwd)/migrations"
psql_q() { psql "$url" -v ON_ERROR_STOP=1 -q -X "$@"; }

psql_q -c "CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())" >/dev/null
for file in "$dir"/[0-9]*.sql; do
  version=$(basename "$file" .sql)
  applied=$(psql_q -tA -c "SELECT 1 FROM schema_migrations WHERE version = '$version'")
  if [ -z "$applied" ]; then
    { echo "BEGIN;"; cat "$file"; echo "INSERT INTO schema_migrations (version) VALUES ('$version'); COMMIT;"; } | psql_q >/dev/null
    echo "migrate: applied $version"
  fi
done
