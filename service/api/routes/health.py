"""Liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import RuntimeDep
from service.api.schemas import Health, Readiness
from service.errors import RegistryUnavailableError

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive and its event loop answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(runtime: RuntimeDep, response: Response) -> Readiness:
    """Ready when the backbone is loaded; says what is degraded (e.g. the registry is down)."""
    degraded = []
    registry = "ok"
    try:
        await runtime.registry.ping()
    except RegistryUnavailableError as exc:
        registry = "unavailable"
        degraded.append(f"registry: {exc}; cached tasks still classify, uploads answer 503")
    if runtime.registry_error and registry == "ok":
        degraded.append(f"registry events: {runtime.registry_error}")
    return Readiness(
        ready=True,
        backbone=runtime.backbone.name,
        registry=registry,  # type: ignore[arg-type]
        degraded=degraded,
        resident_tasks=len(runtime.cache),
        resident_bytes=runtime.cache.resident_bytes,
    )


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus text format: HTTP, cache, engine and registry metrics of this replica."""
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
