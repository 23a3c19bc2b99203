"""One status, problem type and title per error class; every error body is an RFC 9457 problem.

Messages come from the exception (written for users) and become the problem's ``detail``.
FastAPI's own request validation answers 422 with one ``errors`` entry per field; Starlette's
404 (no such route) and 405 (method not allowed, with its ``Allow`` header) answer problems too.
Unexpected exceptions answer 500 with a generic message and are logged with their traceback,
which never reaches the client.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match

from memories.errors import (
    BackboneMismatchError,
    ConfigError,
    InvalidMemoryFileError,
    MemoryTooLargeError,
    SpartanError,
)
from service.api.problems import FieldError, Location, problem
from service.errors import (
    DeadlineExceededError,
    ForbiddenError,
    InvalidRequestError,
    OverloadedError,
    PayloadTooLargeError,
    RateLimitedError,
    RegistryFullError,
    RegistryUnavailableError,
    RequestTimeoutError,
    ServiceError,
    ShuttingDownError,
    StorageQuotaError,
    TaskNotFoundError,
    UnauthorizedError,
    UnknownTenantError,
    UnsupportedMediaTypeError,
    VersionConflictError,
)

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1
"""Retry-After of a 503 (the registry or the service going away): a short, fixed pause."""

MAX_FIELD_ERRORS = 20
"""Field errors listed in one 422 (a huge invalid body must not make a huge answer)."""


@dataclass(frozen=True)
class Kind:
    """How one error class answers: status, problem type slug and title."""

    cls: type[Exception]
    status: int
    slug: str
    title: str


# Most specific first: the first matching class decides the answer.
KINDS: list[Kind] = [
    Kind(UnauthorizedError, 401, "unauthorized", "No valid API key"),
    Kind(ForbiddenError, 403, "forbidden", "The key may not do this"),
    Kind(StorageQuotaError, 403, "storage-quota", "Over the tenant's storage quota"),
    Kind(InvalidRequestError, 422, "invalid-request", "The request cannot be served as sent"),
    Kind(PayloadTooLargeError, 413, "too-large", "Over a size limit"),
    Kind(UnsupportedMediaTypeError, 415, "unsupported-media-type", "Wrong content type"),
    Kind(UnknownTenantError, 404, "tenant-not-found", "No such tenant"),
    Kind(TaskNotFoundError, 404, "task-not-found", "No such task"),
    Kind(VersionConflictError, 412, "version-conflict", "If-Match does not name the current version"),
    Kind(RateLimitedError, 429, "rate-limited", "Over the tenant's rate quota"),
    Kind(OverloadedError, 429, "overloaded", "The service is at capacity"),
    Kind(RequestTimeoutError, 408, "request-timeout", "The request did not arrive in time"),
    Kind(DeadlineExceededError, 504, "deadline-exceeded", "Not served before the request's deadline"),
    Kind(RegistryUnavailableError, 503, "registry-unavailable", "The registry cannot be reached or written"),
    Kind(RegistryFullError, 507, "registry-full", "The registry has no space left"),
    Kind(ShuttingDownError, 503, "shutting-down", "The service is shutting down"),
    Kind(MemoryTooLargeError, 413, "memory-too-large", "The memory file is over the size limit"),
    Kind(InvalidMemoryFileError, 422, "invalid-memory-file", "Not a valid memory file"),
    Kind(BackboneMismatchError, 409, "backbone-mismatch", "The memory was trained for another backbone"),
    Kind(ConfigError, 422, "invalid-options", "An option is out of range"),
    Kind(ServiceError, 400, "bad-request", "The request cannot be served"),
    Kind(SpartanError, 400, "bad-request", "The request cannot be served"),
]

VALIDATION = Kind(RequestValidationError, 422, "validation", "The request does not match the API's schema")
INTERNAL = Kind(Exception, 500, "internal", "Internal error")


def kind_of(exc: Exception) -> Kind:
    return next(kind for kind in KINDS if isinstance(exc, kind.cls))


def _answer(request: Request, kind: Kind, detail: str, **extra: Any) -> Response:
    return problem(kind.status, kind.slug, kind.title, detail, request.url.path, **extra)


async def _known(request: Request, exc: Exception) -> Response:
    kind = kind_of(exc)
    headers = None
    if isinstance(exc, OverloadedError):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    elif kind.status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    elif kind.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    elif kind.status == 408:
        headers = {"Connection": "close"}  # the rest of the body may still be on its way
    return _answer(request, kind, str(exc), headers=headers)


def _field(error: Any, body: Any) -> FieldError:
    """Where one pydantic error is: a JSON pointer into the body as sent (union members' tags,
    which pydantic puts into ``loc``, are left out: they are not in the body), or the parameter."""
    location, *parts = error["loc"]
    if location != "body":
        return FieldError(location=location, pointer=".".join(map(str, parts)), detail=error["msg"])
    tokens, current = [], body
    for part in parts:
        if body is None:  # the body as sent is not at hand: the location as pydantic gives it
            pass
        elif isinstance(current, dict) and isinstance(part, str):
            current = current.get(part)
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
        else:
            continue
        tokens.append(str(part).replace("~", "~0").replace("/", "~1"))
    return FieldError(location="body", pointer="/" + "/".join(tokens), detail=error["msg"])


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    fields = [_field(error, exc.body) for error in exc.errors()[:MAX_FIELD_ERRORS]]
    unique = list({(f.location, f.pointer): f for f in fields}.values())
    detail = "; ".join(f"{_where(f.location, f.pointer)}: {f.detail}" for f in unique[:5])
    return _answer(request, VALIDATION, detail, errors=unique)


def _where(location: Location, pointer: str) -> str:
    if location == "body":
        return "body" + pointer.replace("/", ".") if pointer != "/" else "body"
    return f"{location} {pointer}"


async def _http(request: Request, exc: Exception) -> Response:
    """Starlette's own errors: no such route (404), method not allowed (405, keeping ``Allow``)."""
    assert isinstance(exc, HTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        detail = f"no route {request.url.path}; the API is listed at /docs"
    elif exc.status_code == 405:
        allowed = _allowed(request)
        headers = {**headers, "Allow": allowed}
        detail = f"{request.method} is not allowed on {request.url.path}; use {allowed}"
    else:
        detail = str(exc.detail)
    kind = Kind(HTTPException, exc.status_code, phrase.lower().replace(" ", "-"), phrase)
    return _answer(request, kind, detail, headers=headers)


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed(request: Request) -> str:
    """Every method some route takes on this path (Starlette names only the first route's)."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]
    return ", ".join(allowed)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _answer(request, INTERNAL, "internal error; the service logged the details")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(SpartanError, _known)
    app.add_exception_handler(Exception, _unexpected)
