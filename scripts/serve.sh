#!/usr/bin/env bash
# Set up (idempotent), then run the service on 127.0.0.1:8000 with the demo memories (sst2, bbc)
# seeded into the embedded file registry (./registry). Any `spartan serve` flag can be added.
#   curl -s localhost:8000/v1/sst2/classify -H 'content-type: application/json' -d '{"inputs": "a gorgeous, witty film"}'
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/spartan serve --backbone minilm --seed-dir demo "$@"
