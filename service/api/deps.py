"""FastAPI dependencies: the runtime and the caller.

Both are ``async def`` on purpose: they never block, and FastAPI runs a plain ``def`` dependency
in its thread pool, which costs two thread hand-offs per request on the hot path.
The key is read through FastAPI's security schemes (``Authorization: Bearer`` and
``X-API-Key``), so the OpenAPI spec and ``/docs`` say how to authenticate.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.auth import Caller, KeyRing
from service.runtime import Runtime

LOCAL_TENANT = "local"


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
    keyring: KeyRing = request.app.state.keyring
    presented = api_key.strip() if api_key else bearer.credentials.strip() if bearer else None
    return keyring.caller(presented, LOCAL_TENANT)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
CallerDep = Annotated[Caller, Depends(get_caller)]
