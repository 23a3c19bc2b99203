"""FastAPI dependencies: the runtime and the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.runtime import Caller, Runtime

LOCAL_TENANT = "local"


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_caller(request: Request) -> Caller:
    """Open mode (no API keys configured): every caller is the local admin."""
    return Caller(LOCAL_TENANT, admin=True)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
CallerDep = Annotated[Caller, Depends(get_caller)]
