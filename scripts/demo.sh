#!/usr/bin/env bash
# Set up (idempotent), then evaluate the committed demo memories on the real dev sets.
#   DATA=/path/to/data bash scripts/demo.sh   (default: ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DATA=${DATA:-../shared/data}
for task in sst2 bbc; do
  .venv/bin/spartan eval --memory "demo/$task.safetensors" --data "$DATA" --split dev
done
