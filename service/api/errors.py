"""One HTTP status per error class; every error body is ``{"detail": "<what to fix>"}``.

Messages come from the exception (written for users); unexpected exceptions answer 500 with a
generic message and are logged with their traceback, which never reaches the client.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from memories.errors import (
    BackboneMismatchError,
    ConfigError,
    InvalidMemoryFileError,
    MemoryTooLargeError,
    SpartanError,
)
from service.errors import (
    DeadlineExceededError,
    ForbiddenError,
    InvalidRequestError,
    OverloadedError,
    PayloadTooLargeError,
    RegistryFullError,
    RegistryUnavailableError,
    ServiceError,
    ShuttingDownError,
    StorageQuotaError,
    TaskNotFoundError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
    VersionConflictError,
)

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1
"""Retry-After of a 503 (the registry or the service going away): a short, fixed pause."""

# Most specific first: the first matching class decides the status.
STATUS: list[tuple[type[Exception], int]] = [
    (UnauthorizedError, 401),
    (ForbiddenError, 403),
    (StorageQuotaError, 403),
    (InvalidRequestError, 422),
    (PayloadTooLargeError, 413),
    (UnsupportedMediaTypeError, 415),
    (TaskNotFoundError, 404),
    (VersionConflictError, 412),
    (OverloadedError, 429),
    (DeadlineExceededError, 504),
    (RegistryUnavailableError, 503),
    (RegistryFullError, 507),
    (ShuttingDownError, 503),
    (MemoryTooLargeError, 413),
    (InvalidMemoryFileError, 422),
    (BackboneMismatchError, 409),
    (ConfigError, 422),
    (ServiceError, 400),
    (SpartanError, 400),
]


def status_of(exc: Exception) -> int:
    return next(status for cls, status in STATUS if isinstance(exc, cls))


def _body(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _known(request: Request, exc: Exception) -> JSONResponse:
    status = status_of(exc)
    headers = None
    if isinstance(exc, OverloadedError):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    elif status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    elif status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return _body(status, str(exc), headers)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"] if p != "body") or "body"
        parts.append(f"{where}: {error['msg']}")
    return _body(422, "; ".join(parts))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _body(500, "internal error; the service logged the details")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(SpartanError, _known)
    app.add_exception_handler(Exception, _unexpected)
