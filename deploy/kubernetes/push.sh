#!/usr/bin/env bash
# Builds the image SpinKube runs and pushes it: spin.toml without the cron trigger, since
# containerd-shim-spin runs only HTTP, Redis, MQTT, SQS and command triggers and refuses
# an app naming any other (its trigger.rs, get_supported_triggers). The drain runs there
# through POST /admin/drain, called every second by drain-ticker.json.
#
#   deploy/kubernetes/push.sh                  # builds, pushes $IMAGE
#   deploy/kubernetes/push.sh --print-manifest # the manifest it pushes, on stdout
set -euo pipefail
IMAGE=${IMAGE:-ghcr.io/your-org/flashclaim:0.1.0}
root=$(cd "$(dirname "$0")/../.." && pwd)

# spin.toml minus the [[trigger.cron]] table and the component it runs (drain-cron and
# its sub-tables); every other line is kept as it is.
manifest() {
  awk '
    /^\[\[trigger\.cron\]\]/ { skip = 1; next }
    /^\[component\.drain-cron[].]/ { skip = 1; next }
    /^\[/ { skip = 0 }
    !skip { print }
  ' "$root/spin.toml"
}

if [ "${1:-}" = "--print-manifest" ]; then
  manifest
  exit 0
fi

cd "$root"
make wasm
manifest >spin.spinkube.toml
trap 'rm -f spin.spinkube.toml' EXIT
spin registry push --from spin.spinkube.toml "$IMAGE"
echo "pushed $IMAGE; apply deploy/kubernetes/spinapp.json with this image"
