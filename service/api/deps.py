"""FastAPI dependencies: the runtime and the caller.

Both are ``async def`` on purpose: they never block, and FastAPI runs a plain ``def`` dependency
in its thread pool, which costs two thread hand-offs per request on the hot path.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from service.auth import Caller, KeyRing, presented_key
from service.runtime import Runtime

LOCAL_TENANT = "local"


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_caller(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Caller:
    """The caller named by its API key (401 without a valid one); the local admin in open mode."""
    keyring: KeyRing = request.app.state.keyring
    return keyring.caller(presented_key(authorization, x_api_key), LOCAL_TENANT)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
CallerDep = Annotated[Caller, Depends(get_caller)]
