"""PUT / GET / DELETE /v1/memories: upload, inspect and remove task memories; list, download and
restore (roll back to) a task's kept versions; try a candidate beside the current version
(canary or shadow, service.rollouts), then promote or abort it."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response

from service.api.bodies import read_limited
from service.api.deps import IfMatch, NamespaceDep, RuntimeDep, TaskRefDep
from service.api.problems import problem_responses
from service.api.schemas import (
    CandidateStatus,
    MemoryInfo,
    MemoryPage,
    RolloutInfo,
    TrialNumbers,
    VersionList,
)
from service.errors import TaskNotFoundError, UnsupportedMediaTypeError
from service.registry.base import RolloutMode, VersionInfo
from service.runtime import Runtime

router = APIRouter(tags=["memories"])

OCTET_STREAM = "application/octet-stream"


def _links(task: str, *operations: str) -> dict[str, dict[str, object]]:
    """OpenAPI links: what a client can do next with the task a response names (schemathesis's
    stateful tests follow them). ``task``: a runtime expression, e.g. ``$response.body#/task``."""
    return {
        op.title().replace("_", ""): {"operationId": op, "parameters": {"task": task}} for op in operations
    }


def _octet_stream(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != OCTET_STREAM:
        raise UnsupportedMediaTypeError(
            f"send the memory file as {OCTET_STREAM}, not {content_type or 'no content type'}"
        )


def _info(info: VersionInfo) -> MemoryInfo:
    return MemoryInfo(**asdict(info))


@router.put(
    "/v1/memories/{task}",
    response_model=MemoryInfo,
    responses={
        200: {"links": _links("$response.body#/task", "get_memory", "classify", "delete_memory")},
        **problem_responses(401, 403, 404, 409, 412, 413, 415, 422, 503, 507),
    },
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
    if_match: IfMatch = None,
) -> MemoryInfo:
    """Upload a memory file (the raw safetensors bytes) as the task's next version."""
    _octet_stream(request)
    data = await read_limited(request, runtime.max_upload_bytes, "the memory file")
    return _info(await runtime.upload(ref, data, if_match))


@router.get(
    "/v1/memories",
    response_model=MemoryPage,
    responses={
        200: {"links": _links("$response.body#/items/0/task", "get_memory", "classify")},
        **problem_responses(401, 403, 404, 422, 503),
    },
)
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
    "/v1/memories/{task}",
    response_model=MemoryInfo,
    responses={
        200: {"links": _links("$response.body#/task", "classify")},
        **problem_responses(401, 403, 404, 422, 503),
    },
)
async def get_memory(ref: TaskRefDep, runtime: RuntimeDep, response: Response) -> MemoryInfo:
    """The task's current version and its metadata (ETag: the version)."""
    info = await runtime.resolve(ref)
    response.headers["ETag"] = f'"{info.version}"'
    return _info(info)


@router.delete(
    "/v1/memories/{task}",
    status_code=204,
    responses=problem_responses(401, 403, 404, 412, 422, 503, 507),
)
async def delete_memory(
    ref: TaskRefDep,
    runtime: RuntimeDep,
    if_match: IfMatch = None,
) -> Response:
    """Remove the task and all its versions."""
    await runtime.delete(ref, if_match)
    return Response(status_code=204)


VERSION_PATH = Path(ge=1, description="a kept version number (GET .../versions lists them)")


@router.get(
    "/v1/memories/{task}/versions",
    response_model=VersionList,
    responses={
        200: {"links": _links("$response.body#/task", "get_memory", "classify")},
        **problem_responses(401, 403, 404, 422, 503),
    },
)
async def list_versions(ref: TaskRefDep, runtime: RuntimeDep) -> VersionList:
    """The task's kept versions, newest (current) first, each with its sha256, size, time and metadata."""
    current, kept = await runtime.versions(ref)
    return VersionList(task=ref.task, current=current.version, items=[_info(i) for i in kept])


@router.get(
    "/v1/memories/{task}/versions/{version}/file",
    response_class=Response,
    responses={
        200: {
            "description": "the memory file as uploaded (ETag: its sha256)",
            "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
        },
        304: {"description": "If-None-Match names this file: not sent again"},
        **problem_responses(401, 403, 404, 422, 503),
    },
)
async def download_version(
    ref: TaskRefDep,
    version: Annotated[int, VERSION_PATH],
    runtime: RuntimeDep,
    if_none_match: Annotated[str | None, Header(description="an ETag received before")] = None,
) -> Response:
    """The bytes of one kept version, as uploaded (a file ``spartan eval`` or an upload takes back)."""
    info, data = await runtime.version_file(ref, version)
    etag = f'"{info.sha256}"'
    headers = {"ETag": etag}
    if if_none_match is not None and etag in (tag.strip() for tag in if_none_match.split(",")):
        return Response(status_code=304, headers=headers)
    headers["Content-Disposition"] = f'attachment; filename="{ref.task}-v{info.version}.safetensors"'
    return Response(data, media_type=OCTET_STREAM, headers=headers)


@router.post(
    "/v1/memories/{task}/versions/{version}/restore",
    response_model=MemoryInfo,
    responses={
        200: {"links": _links("$response.body#/task", "get_memory", "classify")},
        **problem_responses(401, 403, 404, 409, 412, 422, 503, 507),
    },
)
async def restore_version(
    ref: TaskRefDep,
    version: Annotated[int, VERSION_PATH],
    runtime: RuntimeDep,
    if_match: IfMatch = None,
) -> MemoryInfo:
    """Roll back: the kept ``version``'s bytes become the task's next version, current at once on
    every replica (like an upload; ``restored_from`` says which). If-Match: the current version."""
    return _info(await runtime.restore(ref, version, if_match))


CANDIDATE_LINKS = _links("$response.body#/task", "get_candidate", "classify", "promote_candidate")


def _status(info: VersionInfo, runtime: Runtime) -> CandidateStatus:
    assert info.rollout is not None, "a candidate status is of a task with a candidate"
    return CandidateStatus(
        task=info.task,
        current=info.version,
        rollout=RolloutInfo.model_validate(info.rollout, from_attributes=True),
        replica=TrialNumbers.model_validate(runtime.trial(info), from_attributes=True),
    )


@router.put(
    "/v1/memories/{task}/candidate",
    response_model=CandidateStatus,
    responses={
        200: {"links": CANDIDATE_LINKS},
        **problem_responses(401, 403, 404, 409, 412, 413, 415, 422, 503, 507),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def put_candidate(
    ref: TaskRefDep,
    request: Request,
    runtime: RuntimeDep,
    mode: Annotated[
        RolloutMode,
        Query(description="canary: serves a share of requests; shadow: scored beside, answers unchanged"),
    ] = "shadow",
    share: Annotated[
        float, Query(ge=0, le=1, description="canary: the share of requests the candidate serves")
    ] = 0.1,
    if_match: IfMatch = None,
) -> CandidateStatus:
    """Upload a candidate memory without making it current: it is tried beside the current version
    (replacing an earlier candidate) on every replica, until promoted or aborted."""
    _octet_stream(request)
    data = await read_limited(request, runtime.max_upload_bytes, "the memory file")
    return _status(await runtime.stage(ref, data, mode, share, if_match), runtime)


@router.get(
    "/v1/memories/{task}/candidate",
    response_model=CandidateStatus,
    responses={200: {"links": CANDIDATE_LINKS}, **problem_responses(401, 403, 404, 422, 503)},
)
async def get_candidate(ref: TaskRefDep, runtime: RuntimeDep) -> CandidateStatus:
    """The candidate on trial and how it compares with the current version on this replica."""
    info = await runtime.resolve(ref)
    if info.rollout is None:
        raise TaskNotFoundError(f"task {ref.task!r} has no candidate on trial")
    return _status(info, runtime)


@router.post(
    "/v1/memories/{task}/candidate/promote",
    response_model=MemoryInfo,
    responses=problem_responses(401, 403, 404, 412, 422, 503, 507),
)
async def promote_candidate(ref: TaskRefDep, runtime: RuntimeDep, if_match: IfMatch = None) -> MemoryInfo:
    """Make the candidate the current version on every replica (If-Match: the current version)."""
    return _info(await runtime.end_rollout(ref, True, if_match))


@router.delete(
    "/v1/memories/{task}/candidate",
    status_code=204,
    responses=problem_responses(401, 403, 404, 412, 422, 503, 507),
)
async def abort_candidate(ref: TaskRefDep, runtime: RuntimeDep, if_match: IfMatch = None) -> Response:
    """End the trial: the current version stays; the candidate (never current) is deleted."""
    await runtime.end_rollout(ref, False, if_match)
    return Response(status_code=204)
