#!/usr/bin/env bash
# Starts (or stops) a private Redis and PostgreSQL for flashclaim on free local ports,
# with their data under $FLASHCLAIM_DATA, and writes their addresses to
# $FLASHCLAIM_DATA/services.env. The tests and benchmarks use .data/test/ (the default);
# `make serve` uses .data/, so a test run never touches the stores of a served app.
#
#   scripts/services.sh start [--durable]   # --durable: Redis AOF with appendfsync always
#   scripts/services.sh stop
#   scripts/services.sh pg-stop | pg-start       # fault tests: stop or restart Postgres only
#   scripts/services.sh redis-stop N | redis-start N   # shard tests: kill (SIGKILL, as a
#                                                # crash) or restart Redis shard N (0-based)
#
# FLASHCLAIM_REDIS_SHARDS=N (default 1) starts N Redis servers, one per shard: shard 0 is
# the usual REDIS_PORT (data in redis/), shard i in redis-i/; services.env then also lists
# REDIS_SHARD_PORTS and FLASHCLAIM_REDIS_SHARD_URLS (comma-separated, shard order).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
data=${FLASHCLAIM_DATA:-$root/.data/test}
envfile="$data/services.env"

free_port() {
  local port
  for _ in $(seq 1 50); do
    # Below Linux's ephemeral range (32768 up), where outgoing connections bind ports that
    # a connect probe cannot see.
    port=$(( (RANDOM % 12000) + 20000 ))
    if ! (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  echo "services: no free port found" >&2
  exit 1
}

pg_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

# Postgres refuses to run as root; when we are root it runs as an unprivileged user,
# which must be able to reach its data directory.
pg_user() {
  if [ "$(id -u)" -ne 0 ]; then
    id -un
  elif id postgres >/dev/null 2>&1; then
    echo postgres
  else
    useradd --system --no-create-home --shell /usr/sbin/nologin flashclaim-pg
    echo flashclaim-pg
  fi
}

pg_data_dir() {
  local user=$1 dir="$data/pg"
  if [ "$(id -u)" -eq 0 ] && ! runuser -u "$user" -- test -x "$data" 2>/dev/null; then
    # An ancestor of the project is closed to other users (e.g. /root): keep the cluster
    # in a per-project directory that the Postgres user can reach.
    dir="/var/tmp/flashclaim-pg-$(echo "$data" | md5sum | cut -c1-12)"
  fi
  echo "$dir"
}

as_pg() {
  local user=$1
  shift
  if [ "$(id -u)" -eq 0 ]; then runuser -u "$user" -- "$@"; else "$@"; fi
}

pg_start() {
  local user=$1 bin=$2 pgdata=$3 port=$4
  # pg_stat_statements keeps one entry per statement per database, and every test has a
  # database of its own: at the default 5,000 entries a full `make test` evicts entries,
  # the one a test is counting included (tests/api.rs counts the detail rebuilds).
  as_pg "$user" "$bin/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w -t 60 start \
    -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=400 -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all -c pg_stat_statements.max=100000" >/dev/null
}

shard_dir() {
  if [ "$1" -eq 0 ]; then echo "$data/redis"; else echo "$data/redis-$1"; fi
}

# Starts Redis shard $1 on port $2 with the persistence flags saved in its directory, so a
# restart (redis-start) comes back with the same port and the same AOF settings.
redis_start() {
  local n=$1 port=$2 dir
  dir=$(shard_dir "$n")
  local persist=(--save "" --appendonly no)
  if [ "$(cat "$dir/persistence")" = durable ]; then
    persist=(--save "" --appendonly yes --appendfsync always)
  fi
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
    --maxclients 10000 --databases 256 "${persist[@]}"
  # PONG, not just an answer: a restart answers LOADING until its AOF is read back.
  for _ in $(seq 1 300); do
    [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.1
  done
  echo "services: redis shard $n did not start on $port: $(tail -n 1 "$dir/redis.log")" >&2
  exit 1
}

shard_port() {
  local ports
  IFS=, read -r -a ports <<<"$REDIS_SHARD_PORTS"
  [ -n "${ports[$1]:-}" ] || { echo "services: no redis shard $1" >&2; exit 2; }
  echo "${ports[$1]}"
}

start() {
  local durable=${1:-}
  local shards=${FLASHCLAIM_REDIS_SHARDS:-1}
  [[ "$shards" =~ ^[1-9][0-9]?$ ]] || { echo "services: FLASHCLAIM_REDIS_SHARDS must be 1-99" >&2; exit 2; }
  mkdir -p "$data/redis"
  # The Postgres user must be able to reach its data directory through .data/.
  chmod 755 "$data"
  if [ -d "$root/.data" ]; then chmod 755 "$root/.data"; fi
  if [ -f "$envfile" ]; then stop >/dev/null 2>&1 || true; fi

  local redis_port pg_port
  local persist=volatile
  if [ "$durable" = "--durable" ]; then persist=durable; fi
  local ports=() urls=() n port dir
  for n in $(seq 0 $((shards - 1))); do
    dir=$(shard_dir "$n")
    mkdir -p "$dir"
    echo "$persist" >"$dir/persistence"
    port=$(free_port)
    redis_start "$n" "$port"
    ports+=("$port")
    urls+=("redis://127.0.0.1:$port")
  done
  redis_port=${ports[0]}

  local user bin pgdata
  user=$(pg_user)
  bin=$(pg_bin)
  pgdata=$(pg_data_dir "$user")
  if [ ! -f "$pgdata/PG_VERSION" ]; then
    mkdir -p "$pgdata"
    chown "$user" "$pgdata" 2>/dev/null || true
    chmod 700 "$pgdata"
    as_pg "$user" "$bin/initdb" -D "$pgdata" -U postgres -A trust -E UTF8 --no-locale >/dev/null
  fi
  pg_port=$(free_port)
  # Tests and benchmarks restart Postgres freely; fsync is kept on so the drain's
  # "acknowledged only after commit" is measured against a real commit.
  pg_start "$user" "$bin" "$pgdata" "$pg_port"

  # `flashclaim` serves the local app; tests copy `flashclaim_template` per test.
  local base="postgres://postgres@127.0.0.1:$pg_port"
  for db in flashclaim flashclaim_template; do
    psql "$base/postgres" -qtAX -c "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
      psql "$base/postgres" -qX -c "CREATE DATABASE $db" >/dev/null
    "$root/scripts/migrate.sh" "$base/$db" >/dev/null
  done
  cat >"$envfile" <<ENV
REDIS_PORT=$redis_port
PG_PORT=$pg_port
PG_DATA=$pgdata
PG_BIN=$bin
PG_USER=$user
FLASHCLAIM_REDIS_URL=redis://127.0.0.1:$redis_port
FLASHCLAIM_PG_URL=postgres://postgres@127.0.0.1:$pg_port/postgres
REDIS_SHARD_PORTS=$(IFS=,; echo "${ports[*]}")
FLASHCLAIM_REDIS_SHARD_URLS=$(IFS=,; echo "${urls[*]}")
ENV
  echo "services: redis on 127.0.0.1:$(IFS=,; echo "${ports[*]}"), postgres on 127.0.0.1:$pg_port ($envfile)"
}

stop() {
  [ -f "$envfile" ] || return 0
  # shellcheck disable=SC1090
  . "$envfile"
  local port list=${REDIS_SHARD_PORTS:-}
  for port in ${list//,/ }; do
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  done
  # services.env written before shards existed names only REDIS_PORT.
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  as_pg "$PG_USER" "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
  rm -f "$envfile"
  echo "services: stopped"
}

load_env() {
  # shellcheck disable=SC1090
  . "$envfile"
}

case "${1:-}" in
  start) start "${2:-}" ;;
  stop) stop ;;
  pg-stop) load_env; as_pg "$PG_USER" "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null ;;
  pg-start) load_env; pg_start "$PG_USER" "$PG_BIN" "$PG_DATA" "$PG_PORT" ;;
  redis-stop)
    load_env
    # SIGKILL: a crash, not a clean shutdown (which would write what it holds).
    pid=$(cat "$(shard_dir "${2:?shard number}")/redis.pid")
    kill -9 "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    ;;
  redis-start) load_env; redis_start "${2:?shard number}" "$(shard_port "$2")" ;;
  *) echo "usage: $0 start [--durable] | stop | pg-stop | pg-start | redis-stop N | redis-start N" >&2; exit 2 ;;
esac
