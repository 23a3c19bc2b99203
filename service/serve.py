"""Run the service in this process: one uvicorn worker, one backbone (``python -m service``).

One worker on purpose: each worker would hold its own backbone copy and split the metrics.
Scale out with replicas.

SIGTERM drains first (``drain_s``): ``/readyz`` answers 503 at once while every request is still
served, so a load balancer's health check takes the replica out before it stops listening; then
uvicorn stops accepting, lets admitted requests finish and exits. A second signal exits at once.
"""

from __future__ import annotations

import logging
import threading
from types import FrameType
from typing import Any

from service.settings import ServiceSettings

log = logging.getLogger("spartan.serve")


def run(settings: ServiceSettings) -> None:
    """Serve ``settings.host:settings.port`` until SIGINT/SIGTERM (drained, see the module)."""
    import uvicorn

    from memories.allocator import ARENAS_ONLY, REUSE, tune_malloc
    from service.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    malloc = tune_malloc(REUSE if settings.malloc_reuse else ARENAS_ONLY)  # before threads allocate
    log.info("malloc: %s", ", ".join(f"{name} {value}" for name, value in malloc.items()) or "glibc defaults")
    app = create_app(settings)

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            runtime = getattr(app.state, "runtime", None)
            if runtime is None or runtime.draining or settings.drain_s == 0:
                super().handle_exit(sig, frame)  # not started yet, a second signal, or no drain asked
                return
            runtime.draining = True
            log.info(
                "signal %d: not ready for %.1f s, still serving; then shutting down", sig, settings.drain_s
            )
            timer = threading.Timer(settings.drain_s, super().handle_exit, (sig, frame))
            timer.daemon = True
            timer.start()

    DrainingServer(uvicorn_config(app, settings)).run()


def uvicorn_config(app: Any, settings: ServiceSettings, log_level: str = "info") -> Any:
    """One worker on ``settings.host:port``, with the connection guards (service.guards)."""
    import uvicorn

    from service.guards import guarded_protocol

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level=log_level,
        access_log=settings.access_log,
        http=guarded_protocol(settings.max_connections, settings.header_timeout_s),
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        lifespan="on",
    )
