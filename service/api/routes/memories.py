"""PUT / GET / DELETE /v1/memories: upload, inspect and remove task memories."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from service.api.deps import NamespaceDep, RuntimeDep, TaskRefDep
from service.api.schemas import ErrorBody, MemoryInfo, MemoryPage
from service.errors import InvalidRequestError, PayloadTooLargeError, UnsupportedMediaTypeError
from service.registry.base import VersionInfo

router = APIRouter(tags=["memories"])

OCTET_STREAM = "application/octet-stream"


def _info(info: VersionInfo) -> MemoryInfo:
    return MemoryInfo(**asdict(info))


def _if_match(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip().strip('"')
    if not text.isdigit():
        raise InvalidRequestError(
            f"If-Match must be a version number (e.g. 3, or 0 for 'must not exist'), got {value!r}"
        )
    return int(text)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"the memory file is {declared} bytes; the limit is {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"the memory file exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.put(
    "/v1/memories/{task}",
    response_model=MemoryInfo,
    responses={code: {"model": ErrorBody} for code in (403, 404, 409, 412, 413, 415, 422, 503, 507)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def put_memory(
    ref: TaskRefDep,
    request: Request,
    runtime: RuntimeDep,
    if_match: Annotated[str | None, Header()] = None,
) -> MemoryInfo:
    """Upload a memory file (the raw safetensors bytes) as the task's next version."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != OCTET_STREAM:
        raise UnsupportedMediaTypeError(
            f"send the memory file as {OCTET_STREAM}, not {content_type or 'no content type'}"
        )
    expected = _if_match(if_match)
    data = await _read_body(request, runtime.max_upload_bytes)
    return _info(await runtime.upload(ref, data, expected))


@router.get("/v1/memories", response_model=MemoryPage, responses={403: {"model": ErrorBody}})
async def list_memories(
    runtime: RuntimeDep,
    namespace: NamespaceDep,
    after: Annotated[str | None, Query(description="task id to start after")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> MemoryPage:
    """The addressed tenant's tasks in id order, ``limit`` at a time."""
    items, cursor = await runtime.page(namespace, after, limit)
    return MemoryPage(items=[_info(i) for i in items], next=cursor)


@router.get(
    "/v1/memories/{task}", response_model=MemoryInfo, responses={c: {"model": ErrorBody} for c in (403, 404)}
)
async def get_memory(ref: TaskRefDep, runtime: RuntimeDep, response: Response) -> MemoryInfo:
    """The task's current version and its metadata (ETag: the version)."""
    info = await runtime.resolve(ref)
    response.headers["ETag"] = f'"{info.version}"'
    return _info(info)


@router.delete(
    "/v1/memories/{task}",
    status_code=204,
    responses={code: {"model": ErrorBody} for code in (403, 404, 412, 503, 507)},
)
async def delete_memory(
    ref: TaskRefDep,
    runtime: RuntimeDep,
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Remove the task and all its versions."""
    await runtime.delete(ref, _if_match(if_match))
    return Response(status_code=204)
