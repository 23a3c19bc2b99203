"""RFC 9457 problem details: the one shape of every error response, and how routes declare it.

Every error answers ``application/problem+json``::

    {"type": "tag:spartan-serve,2026:task-not-found", "title": "Task not found", "status": 404,
     "detail": "no task 'sentiment' in tenant 'acme'", "instance": "/v1/sentiment/classify"}

``type`` names the kind of problem (a ``tag:`` URI, RFC 4151: an identifier, not a page to fetch;
the list is in docs/api.md), ``title`` is the same for every problem of that type, ``detail`` says
what went wrong this time and what to fix. A 422 of request validation adds ``errors``: one entry
per field, where it is (``location`` and a JSON pointer or parameter name) and what is wrong.
On the Open Inference Protocol's paths (/v2/...) a problem also carries ``error``, the member
where v2 clients read the message (an extension member, which RFC 9457 allows).

:func:`problem_responses` declares these bodies in an operation's OpenAPI ``responses``, so the
spec lists every status a route returns with the body it really sends.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Literal

from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "tag:spartan-serve,2026:"
"""Every problem type of the service is ``TYPE_PREFIX + <slug>``."""

V2_PREFIX = "/v2/"
"""Problems on these paths also carry ``error``: the Open Inference Protocol's error member."""

Location = Literal["body", "query", "path", "header", "cookie"]


class FieldError(BaseModel):
    """One field of a request that failed validation."""

    location: Location = Field(description="which part of the request holds the field")
    pointer: str = Field(
        description="in the body: a JSON pointer (RFC 6901) to the field, e.g. /inputs/0; "
        "elsewhere: the parameter's name"
    )
    detail: str = Field(description="what is wrong with it")


class Problem(BaseModel):
    """An error (RFC 9457): what kind, and what to fix."""

    type: str = Field(description=f"the problem type, {TYPE_PREFIX}<slug> (listed in docs/api.md)")
    title: str = Field(description="a short summary of the problem type, the same every time")
    status: int = Field(ge=400, le=599, description="the HTTP status of this response")
    detail: str = Field(description="what went wrong this time and what to fix")
    instance: str = Field(description="the path of the request that failed")
    errors: list[FieldError] | None = Field(None, description="422 of validation: one entry per field")
    error: str | None = Field(
        None, description="on /v2 only: the detail again, where Open Inference Protocol v2 clients read it"
    )


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    instance: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> ProblemResponse:
    body = Problem(
        type=TYPE_PREFIX + slug,
        title=title,
        status=status,
        detail=detail,
        instance=instance,
        errors=errors,
        error=detail if instance.startswith(V2_PREFIX) else None,
    )
    return ProblemResponse(body.model_dump(mode="json", exclude_none=True), status, headers)


HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}},
    503: {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}},
}

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """An operation's error responses for FastAPI's ``responses=``: each a Problem body.

    The Problem schema itself is added to the spec's components by service.api.openapi.
    """
    declared: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        response: dict[str, Any] = {
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF}},
        }
        if status in HEADERS:
            response["headers"] = HEADERS[status]
        declared[status] = response
    return declared
