#!/usr/bin/env bash
# Installs what flashclaim needs on a fresh Debian/Ubuntu machine, and nothing that is
# already there: the wasm32-wasip2 Rust target, Redis, PostgreSQL (with its contrib
# modules, for pg_stat_statements), curl, Python with venv (Schemathesis runs from a
# virtualenv under .data/), and Prometheus with promtool (the alert rules' tests and the
# real-Prometheus test, `make test-alerts` and `make test-metrics`).
#
# `deps.sh --browser` (what `make test` runs) adds the browser tests' tools: Debian's
# Chromium (Playwright may not download a browser here), CJK fonts for the Chinese screens,
# npm for axe-core, and Playwright for Python with pytest in .data/browser/venv.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
browser=false
edge=false
for arg in "$@"; do
  case $arg in
    --browser) browser=true ;;
    --edge) edge=true ;; # `make bench-edge`: nginx as the edge cache's stand-in
  esac
done

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v redis-benchmark >/dev/null 2>&1 || need_apt+=(redis-tools)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need_apt+=(postgresql)
fi
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need_apt+=(prometheus)
if $browser; then
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
  dpkg -s fonts-noto-cjk >/dev/null 2>&1 || need_apt+=(fonts-noto-cjk)
  command -v npm >/dev/null 2>&1 || need_apt+=(npm)
fi
if $edge; then
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
fi

if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "deps: installing ${need_apt[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # Debian starts the packaged services; flashclaim runs its own on private ports.
  $sudo service redis-server stop >/dev/null 2>&1 || true
  $sudo service postgresql stop >/dev/null 2>&1 || true
  $sudo service nginx stop >/dev/null 2>&1 || true
  # The tests start their own Prometheus on a free port, with their own storage.
  $sudo service prometheus stop >/dev/null 2>&1 || true
fi

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "deps: adding the wasm32-wasip2 target"
  rustup target add wasm32-wasip2
fi

if $browser; then
  dir="$root/.data/browser"
  mkdir -p "$dir"
  # Reinstalled when tests/browser/requirements.txt changes (the versions are pinned there).
  if [ ! -x "$dir/venv/bin/pytest" ] || ! cmp -s "$root/tests/browser/requirements.txt" "$dir/requirements.txt"; then
    echo "deps: Playwright for Python and pytest in .data/browser/venv"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install -q -r "$root/tests/browser/requirements.txt"
    cp "$root/tests/browser/requirements.txt" "$dir/requirements.txt"
  fi
  # axe-core runs inside the pages under test; a pinned release from npm.
  axe_version=4.14.1
  if ! grep -qs "\"version\": \"$axe_version\"" "$dir/node_modules/axe-core/package.json"; then
    echo "deps: axe-core $axe_version from npm"
    npm install --silent --no-save --no-audit --no-fund --prefix "$dir" "axe-core@$axe_version" >/dev/null
  fi
fi
