"""FastAPI dependencies: the runtime, the caller and the namespace or task a request addresses.

Both are ``async def`` on purpose: they never block, and FastAPI runs a plain ``def`` dependency
in its thread pool, which costs two thread hand-offs per request on the hot path.
The key is read through FastAPI's security schemes (``Authorization: Bearer`` and
``X-API-Key``), so the OpenAPI spec and ``/docs`` say how to authenticate.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.auth import Caller
from service.runtime import Runtime
from service.tasks import DEFAULT_TENANT, TENANT_PATTERN, TaskRef
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


async def get_task_ref(task: str, namespace: NamespaceDep) -> TaskRef:
    """The task named in the path, in the addressed namespace (422 for an invalid id)."""
    return TaskRef(namespace, task)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
TaskRefDep = Annotated[TaskRef, Depends(get_task_ref)]
