#!/usr/bin/env bash
# Builds the image SpinKube's containerd-shim-spin runs and pushes it: spin.toml as it is.
# The shim (v0.24) embeds Spin 3.6.3 and runs only HTTP, Redis, MQTT, SQS and command
# triggers (its trigger.rs, get_supported_triggers); spin.toml has HTTP triggers and WASIp2
# components only, so it runs there. The drain runs through POST /admin/drain, called with
# the drain token by drain-ticker.json (every second) or drain-cronjob.json (every minute).
#
#   deploy/kubernetes/push.sh                  # builds, pushes $IMAGE
#   deploy/kubernetes/push.sh --print-manifest # the manifest it pushes, on stdout
# (deploy/kubernetes-spin41/push.sh runs this with its own image and MANIFEST.)
set -euo pipefail
IMAGE=${IMAGE:-ghcr.io/your-org/flashclaim:0.1.0}
root=$(cd "$(dirname "$0")/../.." && pwd)
MANIFEST=${MANIFEST:-spin.toml}

if [ "${1:-}" = "--print-manifest" ]; then
  cat "$root/$MANIFEST"
  exit 0
fi

cd "$root"
make wasm
spin registry push --from "$MANIFEST" "$IMAGE"
echo "pushed $IMAGE ($MANIFEST); apply its spinapp.json with this image"
