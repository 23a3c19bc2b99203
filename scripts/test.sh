#!/usr/bin/env bash
# Set up (idempotent) and run every check: ruff, ruff format, mypy, pytest.
# Tests that need Redis expect it at 127.0.0.1:6379 (.ci/run starts it when it is down).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
.venv/bin/pytest -q "$@"
