"""GET /v1/usage: what a tenant used, per task and hour, for billing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.api.deps import NamespaceDep, RuntimeDep, ZonedTime
from service.api.problems import problem_responses
from service.api.schemas import UsageReport

router = APIRouter(tags=["usage"])

ZONED = "RFC 3339 with a time zone, e.g. 2026-12-03T00:00:00Z"


@router.get("/v1/usage", response_model=UsageReport, responses=problem_responses(401, 403, 404, 422, 503))
async def usage(
    runtime: RuntimeDep,
    namespace: NamespaceDep,
    since: Annotated[ZonedTime, Query(description=f"{ZONED}; default: 24 h before until")] = None,
    until: Annotated[ZonedTime, Query(description=f"{ZONED}; default: now")] = None,
) -> UsageReport:
    """Answered requests, texts and tokens of the addressed tenant per task, over the whole clock
    hours from ``since`` to ``until``, summed over every replica."""
    return UsageReport.model_validate(
        await runtime.usage_period(namespace, since, until), from_attributes=True
    )
