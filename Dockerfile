# Placeholder: the multi-stage CPU image (torch==2.13.0, non-root, HEALTHCHECK on /healthz,
# demo memories included, one uvicorn worker) is built in issue 5.
