"""FastAPI dependencies: the runtime, the caller and the namespace or task a request addresses,
and the typed headers and query parameters several routes take.

Both are ``async def`` on purpose: they never block, and FastAPI runs a plain ``def`` dependency
in its thread pool, which costs two thread hand-offs per request on the hot path.
The key is read through FastAPI's security schemes (``Authorization: Bearer`` and
``X-API-Key``), so the OpenAPI spec and ``/docs`` say how to authenticate.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from service.auth import Caller
from service.runtime import Runtime
from service.tasks import DEFAULT_TENANT, TASK_ID_PATTERN, TENANT_PATTERN, TaskRef
from service.tenancy import Tenancy


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


BEARER = HTTPBearer(auto_error=False, description="an API key from 'spartan keys add'")
API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="the same API key, for clients that cannot send Bearer"
)


async def get_caller(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    api_key: Annotated[str | None, Depends(API_KEY_HEADER)],
) -> Caller:
    """The caller named by its API key (401 without a valid one); the local admin in open mode."""
    tenancy: Tenancy = request.app.state.tenancy
    presented = api_key.strip() if api_key else bearer.credentials.strip() if bearer else None
    return tenancy.keyring.caller(presented, DEFAULT_TENANT)


CallerDep = Annotated[Caller, Depends(get_caller)]

TENANT_QUERY = Query(
    description="admin keys only: the tenant whose tasks to address (default: the key's own tenant)",
    pattern=TENANT_PATTERN,
)


async def get_namespace(
    request: Request, caller: CallerDep, tenant: Annotated[str | None, TENANT_QUERY] = None
) -> str:
    """The tenant whose namespace the request addresses (403 for a tenant key naming another)."""
    tenancy: Tenancy = request.app.state.tenancy
    return tenancy.keyring.namespace(caller, tenant, upload=request.method == "PUT")


NamespaceDep = Annotated[str, Depends(get_namespace)]


TASK_PATH = Path(
    description="the task id (unique within its tenant)", pattern=TASK_ID_PATTERN, examples=["sst2"]
)


async def get_task_ref(task: Annotated[str, TASK_PATH], namespace: NamespaceDep) -> TaskRef:
    """The task named in the path, in the addressed namespace (422 for an invalid id)."""
    return TaskRef(namespace, task)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
TaskRefDep = Annotated[TaskRef, Depends(get_task_ref)]


IF_MATCH_PATTERN = r'^"?[0-9]+"?$'


def _version(value: object) -> int | None:
    if value is None:
        return None
    text = str(value).strip()
    if not re.fullmatch(IF_MATCH_PATTERN, text):
        raise PydanticCustomError(
            "if_match",
            "If-Match must be a version number (e.g. 3, or 0 for 'must not exist'), got {value}",
            {"value": repr(value)[:80]},
        )
    return int(text.strip('"'))


IfMatch = Annotated[
    int | None,
    BeforeValidator(_version),
    WithJsonSchema({"type": "string", "pattern": IF_MATCH_PATTERN}),
    Header(description="compare-and-set: the version the caller believes current (0: must not exist)"),
]
"""The If-Match header as a version number (a bare or quoted integer, like the ETag it echoes)."""

RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _zoned(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str) or not RFC3339.fullmatch(value):
        raise PydanticCustomError(
            "zoned_time",
            "give a time as RFC 3339 with a time zone, e.g. 2026-12-03T00:00:00Z, got {value}",
            {"value": repr(value)[:80]},
        )
    return datetime.fromisoformat(value)


ZonedTime = Annotated[datetime | None, BeforeValidator(_zoned)]
"""A time in a query: RFC 3339 with its offset (what the spec's ``date-time`` format means)."""
