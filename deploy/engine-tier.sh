#!/usr/bin/env bash
# Engine tier: build the image, bring up a device profile with compose, let its load generator run
# a short load test, collect the report, tear everything down. Needs a running Docker engine.
#   deploy/engine-tier.sh raspi4        # or iphone
# Without an image registry (offline hosts), build a base image first and pass it:
#   PYTHON_IMAGE=local/python:3.11 deploy/engine-tier.sh raspi4   (see deploy/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:?usage: deploy/engine-tier.sh raspi4|iphone}
compose=(docker compose --profile "$profile")
docker info >/dev/null 2>&1 || { echo "no Docker engine answers; see deploy/README.md (Engine tier)" >&2; exit 2; }
build_args=()
[ -n "${PYTHON_IMAGE:-}" ] && build_args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
[ -n "${TORCH_INDEX_URL:-}" ] && build_args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
docker build --network host "${build_args[@]}" -t spartan-serve:0.1.0 .
trap '"${compose[@]}" down --remove-orphans' EXIT
mkdir -p results/compose
"${compose[@]}" up --detach --no-build
echo "waiting for loadgen-$profile to finish (bounded: the load test runs 60 s)"
status=$(timeout 900 docker wait "spartan-loadgen-$profile-1")
"${compose[@]}" logs --no-color "loadgen-$profile" | tail -5
echo "load generator exit status $status; report: results/compose/$profile-steady.json"
exit "$status"
