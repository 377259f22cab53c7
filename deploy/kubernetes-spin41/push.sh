#!/usr/bin/env bash
# SpinKube with a Spin 4.1 image (the Spintainer executor, executor.json): pushes
# spin.wasip3.toml, the WASIp3 claim and log-in and the drain on the cron trigger, which the
# image's trigger-cron plugin runs every second in every pod (runs on several pods at once
# are safe: the drain takes entries through a Redis consumer group and writes idempotently).
# Spintainer's Spin pulls the app itself, so the app image must be pullable without
# credentials. Build the runtime image first: `docker build -t $SPIN_IMAGE
# deploy/kubernetes-spin41` (Dockerfile beside this script).
#
#   deploy/kubernetes-spin41/push.sh                  # builds, pushes $IMAGE
#   deploy/kubernetes-spin41/push.sh --print-manifest # the manifest it pushes, on stdout
set -euo pipefail
IMAGE=${IMAGE:-ghcr.io/your-org/flashclaim-wasip3:0.1.0}
export IMAGE MANIFEST=spin.wasip3.toml
exec "$(dirname "$0")/../kubernetes/push.sh" "$@"
