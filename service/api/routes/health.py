"""Liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import CallerDep, RuntimeDep
from service.api.problems import problem_responses
from service.api.schemas import Health, PrecisionCandidate, PrecisionStatus, Readiness
from service.errors import ForbiddenError

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive and its event loop answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(runtime: RuntimeDep, response: Response) -> Readiness:
    """Ready when the backbone is loaded; says what is degraded (e.g. the registry is down).
    503 while draining after SIGTERM (requests are still served; see service.serve)."""
    status = await runtime.status()
    choice, decision = status.precision, status.precision.decision
    precision = PrecisionStatus(setting=choice.setting, mode=choice.mode, routing=choice.routing)
    if decision is not None:
        precision = PrecisionStatus(
            setting=choice.setting,
            mode=choice.mode,
            cpu=decision.cpu,
            cpu_flags=decision.cpu_flags,
            torch_capability=decision.torch_capability,
            decided_in_s=decision.seconds,
            cached=decision.cached,
            candidates=[PrecisionCandidate.model_validate(c) for c in decision.candidates],
            routing=choice.routing,
        )
    if runtime.draining:
        response.status_code = 503
    return Readiness(
        ready=not runtime.draining,
        backbone=status.backbone,
        precision=precision,
        registry="ok" if status.registry_up else "unavailable",
        degraded=status.degraded + (["draining: shutting down after SIGTERM"] if runtime.draining else []),
        resident_tasks=status.resident_tasks,
        resident_bytes=status.resident_bytes,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
        **problem_responses(401, 403),
    },
)
async def metrics(request: Request, caller: CallerDep) -> Response:
    """Prometheus text format: HTTP, tenants' usage, cache, engine and registry metrics of this
    replica. Needs an admin key when keys are configured (it names every tenant)."""
    if not caller.admin:
        raise ForbiddenError("the metrics name every tenant: they need an admin key")
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
