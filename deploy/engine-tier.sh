#!/usr/bin/env bash
# Engine tier: build the image, bring up a device profile with compose, let its load generator run
# a short load test, collect the report, tear everything down. Needs a running Docker engine.
#   deploy/engine-tier.sh raspi4        # or iphone
# Offline hosts (no image registry, no CPU torch index), as run on this project's build host:
#   PYTHON_IMAGE=local/debian-python:3.11 WHEELS_DIR=/opt/wheels REDIS_PORT=6390 deploy/engine-tier.sh raspi4
# PYTHON_IMAGE: a locally built base with python 3.11 (deploy/README.md, "Engine tier");
# WHEELS_DIR: a directory holding the torch==2.13.0 CPU wheel, served to the build on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:?usage: deploy/engine-tier.sh raspi4|iphone}
compose=(docker compose --profile "$profile")
docker info >/dev/null 2>&1 || { echo "no Docker engine answers; see deploy/README.md (Engine tier)" >&2; exit 2; }
build_args=()
[ -n "${PYTHON_IMAGE:-}" ] && build_args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
[ -n "${TORCH_INDEX_URL:-}" ] && build_args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
wheels_pid=
if [ -n "${WHEELS_DIR:-}" ]; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  python3 -m http.server --bind 127.0.0.1 --directory "$WHEELS_DIR" "$port" >/dev/null 2>&1 &
  wheels_pid=$!
  build_args+=(--build-arg "PIP_FIND_LINKS=http://127.0.0.1:$port/" --build-arg "TORCH_INDEX_URL=https://pypi.org/simple")
fi
DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} docker build --network host "${build_args[@]}" -t spartan-serve:0.1.0 .
DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} docker build --network host "${build_args[@]}" --target loadgen \
  -t spartan-loadgen:0.1.0 .
[ -n "$wheels_pid" ] && kill "$wheels_pid"
trap '"${compose[@]}" down --remove-orphans' EXIT
mkdir -p results/compose
started=$(date +%s)
"${compose[@]}" up --detach --no-build
echo "waiting for loadgen-$profile to finish (its load test runs 60 s after the service is healthy)"
status=$(timeout 1200 docker wait "spartan-loadgen-$profile-1")
echo "loadgen-$profile exit status $status, $(( $(date +%s) - started )) s after up"
"${compose[@]}" logs --no-color "loadgen-$profile" | tail -3
docker inspect --format '{{.State.Health.Status}} {{.HostConfig.NanoCpus}} {{.HostConfig.CpusetCpus}} {{.HostConfig.Memory}}' \
  "spartan-spartan-$profile-1"
echo "report: results/compose/$profile-steady.json"
exit "$status"
