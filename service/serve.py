"""Run the service in this process: one uvicorn worker, one backbone (``python -m service``).

One worker on purpose: each worker would hold its own backbone copy and split the metrics.
Scale out with replicas.
"""

from __future__ import annotations

import logging

from service.settings import ServiceSettings


def run(settings: ServiceSettings) -> None:
    """Serve ``settings.host:settings.port`` until SIGINT/SIGTERM (admitted requests finish first)."""
    import uvicorn

    from service.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level="info",
        access_log=settings.access_log,
    )
