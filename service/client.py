"""A small typed client for the service (httpx), sync and async.

Both clients share :class:`_Calls`, which builds each request and parses each response; they
differ only in how they send. Error responses raise :class:`ServiceHTTPError` with the status,
the server's message and, for 429/503, the Retry-After seconds.

    with SpartanClient("http://127.0.0.1:8000", api_key=key) as client:
        client.put_memory("sentiment", Path("sst2.safetensors").read_bytes())
        print(client.classify("sentiment", ["a gorgeous film"]).predictions[0].label)

An admin key reaches another tenant's tasks with ``tenant=`` (sent as ``?tenant=`` on every call).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from service.api.schemas import (
    CandidateStatus,
    ClassifyRequest,
    ClassifyResponse,
    MemoryInfo,
    MemoryPage,
    PairInput,
    PipelineAnswer,
    Readiness,
    UsageReport,
    VersionList,
)
from service.predictions import AnswerFormat, Explain
from service.registry.base import RolloutMode

M = TypeVar("M", bound=BaseModel)
Inputs = str | Sequence[str] | Sequence[PairInput] | Sequence[tuple[str, str]]


class ServiceHTTPError(Exception):
    """An error response (an RFC 9457 problem): ``status``, the server's ``detail``, the problem
    ``type`` (docs/api.md lists them) and ``retry_after`` (seconds) if given."""

    def __init__(
        self, status: int, detail: str, retry_after: float | None, problem_type: str | None = None
    ) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.retry_after = retry_after
        self.problem_type = problem_type


@dataclass(frozen=True)
class _Request:
    method: str
    url: str
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] | None = None
    params: dict[str, Any] | None = None


class _Calls:
    """Request builders and response parsers shared by both clients."""

    @staticmethod
    def classify(
        task: str,
        inputs: Inputs,
        explain: Explain,
        answer_format: AnswerFormat,
        top_k: int | None,
        exit_threshold: float | None = None,
    ) -> _Request:
        if isinstance(inputs, str):
            body: Any = inputs
        else:
            body = [PairInput(text=i[0], pair=i[1]) if isinstance(i, tuple) else i for i in inputs]
        request = ClassifyRequest(inputs=body, explain=explain, exit_threshold=exit_threshold)
        params: dict[str, Any] = {"format": answer_format} if answer_format != "spartan" else {}
        if top_k is not None:
            params["top_k"] = top_k
        payload = request.model_dump(mode="json", exclude_none=True)
        return _Request("POST", f"/v1/{task}/classify", json=payload, params=params or None)

    @staticmethod
    def versions(task: str) -> _Request:
        return _Request("GET", f"/v1/memories/{task}/versions")

    @staticmethod
    def download(task: str, version: int) -> _Request:
        return _Request("GET", f"/v1/memories/{task}/versions/{version}/file")

    @staticmethod
    def put_candidate(task: str, data: bytes, mode: str, share: float, if_match: int | None) -> _Request:
        headers = {"content-type": "application/octet-stream"}
        if if_match is not None:
            headers["if-match"] = str(if_match)
        params = {"mode": mode, "share": share}
        return _Request("PUT", f"/v1/memories/{task}/candidate", content=data, headers=headers, params=params)

    @staticmethod
    def end_candidate(task: str, promote: bool, if_match: int | None) -> _Request:
        headers = {"if-match": str(if_match)} if if_match is not None else None
        if promote:
            return _Request("POST", f"/v1/memories/{task}/candidate/promote", headers=headers)
        return _Request("DELETE", f"/v1/memories/{task}/candidate", headers=headers)

    @staticmethod
    def restore(task: str, version: int, if_match: int | None) -> _Request:
        headers = {"if-match": str(if_match)} if if_match is not None else None
        return _Request("POST", f"/v1/memories/{task}/versions/{version}/restore", headers=headers)

    @staticmethod
    def put_memory(task: str, data: bytes, if_match: int | None) -> _Request:
        headers = {"content-type": "application/octet-stream"}
        if if_match is not None:
            headers["if-match"] = str(if_match)
        return _Request("PUT", f"/v1/memories/{task}", content=data, headers=headers)

    @staticmethod
    def delete_memory(task: str, if_match: int | None) -> _Request:
        return _Request(
            "DELETE", f"/v1/memories/{task}", headers={"if-match": str(if_match)} if if_match else None
        )

    @staticmethod
    def list_page(after: str | None, limit: int) -> _Request:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        return _Request("GET", "/v1/memories", params=params)

    @staticmethod
    def parse(response: httpx.Response, model: type[M] | None) -> M | None:
        if response.status_code >= 400:
            try:
                problem = response.json()
                detail, problem_type = str(problem.get("detail", response.text)), problem.get("type")
            except ValueError:
                detail, problem_type = response.text, None
            retry = response.headers.get("retry-after")
            raise ServiceHTTPError(
                response.status_code, detail, float(retry) if retry else None, problem_type
            )
        return model.model_validate_json(response.content) if model is not None else None


def _headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def _params(tenant: str | None) -> dict[str, str]:
    return {"tenant": tenant} if tenant else {}


def _usage(since: datetime | None, until: datetime | None) -> _Request:
    params = {name: value.isoformat() for name, value in (("since", since), ("until", until)) if value}
    return _Request("GET", "/v1/usage", params=params)


KEEPALIVE_S = 2.0
"""How long an idle connection is reused: below the server's keep-alive timeout (uvicorn's 5 s), so
the client never sends on a connection the server is closing at that moment (the request would
fail with a ReadError; seen when a hot-swap upload came every 5 s)."""


class SpartanClient:
    """Blocking client."""

    def __init__(
        self, base_url: str, api_key: str | None = None, timeout: float = 60.0, tenant: str | None = None
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url,
            headers=_headers(api_key),
            params=_params(tenant),
            timeout=timeout,
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_S),
        )

    def __enter__(self) -> SpartanClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, request: _Request, model: type[M] | None) -> M | None:
        response = self._http.request(
            request.method,
            request.url,
            json=request.json,
            content=request.content,
            headers=request.headers,
            params=request.params,
        )
        return _Calls.parse(response, model)

    def _download(self, request: _Request) -> bytes:
        response = self._http.request(request.method, request.url)
        _Calls.parse(response, None)
        return response.content

    def classify(
        self,
        task: str,
        inputs: Inputs,
        explain: Explain = "none",
        top_k: int | None = None,
        exit_threshold: float | None = None,
    ) -> ClassifyResponse:
        """``top_k``: only the k most probable labels' scores (default: every label);
        ``exit_threshold``: a task's early-exit threshold for this request (default: the task's)."""
        request = _Calls.classify(task, inputs, explain, "spartan", top_k, exit_threshold)
        return _required(self._send(request, ClassifyResponse))

    def classify_pipeline(self, task: str, inputs: Inputs, top_k: int | None = None) -> PipelineAnswer:
        """What a transformers text-classification pipeline returns for ``inputs``."""
        return _required(self._send(_Calls.classify(task, inputs, "none", "pipeline", top_k), PipelineAnswer))

    def list_versions(self, task: str) -> VersionList:
        return _required(self._send(_Calls.versions(task), VersionList))

    def download_version(self, task: str, version: int) -> bytes:
        """The memory file of a kept version, as uploaded."""
        return self._download(_Calls.download(task, version))

    def restore_version(self, task: str, version: int, if_match: int | None = None) -> MemoryInfo:
        """Roll back: ``version``'s bytes become the next, current version."""
        return _required(self._send(_Calls.restore(task, version, if_match), MemoryInfo))

    def put_candidate(
        self,
        task: str,
        data: bytes,
        mode: RolloutMode = "shadow",
        share: float = 0.1,
        if_match: int | None = None,
    ) -> CandidateStatus:
        """Try a memory beside the current version: ``canary`` serves ``share`` of the requests,
        ``shadow`` scores every request without changing answers."""
        request = _Calls.put_candidate(task, data, mode, share, if_match)
        return _required(self._send(request, CandidateStatus))

    def get_candidate(self, task: str) -> CandidateStatus:
        """The trial and how the candidate compares (this replica's numbers)."""
        return _required(self._send(_Request("GET", f"/v1/memories/{task}/candidate"), CandidateStatus))

    def promote_candidate(self, task: str, if_match: int | None = None) -> MemoryInfo:
        return _required(self._send(_Calls.end_candidate(task, True, if_match), MemoryInfo))

    def abort_candidate(self, task: str, if_match: int | None = None) -> None:
        self._send(_Calls.end_candidate(task, False, if_match), None)

    def put_memory(self, task: str, data: bytes, if_match: int | None = None) -> MemoryInfo:
        return _required(self._send(_Calls.put_memory(task, data, if_match), MemoryInfo))

    def get_memory(self, task: str) -> MemoryInfo:
        return _required(self._send(_Request("GET", f"/v1/memories/{task}"), MemoryInfo))

    def delete_memory(self, task: str, if_match: int | None = None) -> None:
        self._send(_Calls.delete_memory(task, if_match), None)

    def list_memories(self, page_size: int = 100) -> Iterator[MemoryInfo]:
        after: str | None = None
        while True:
            page = _required(self._send(_Calls.list_page(after, page_size), MemoryPage))
            yield from page.items
            if page.next is None:
                return
            after = page.next

    def usage(self, since: datetime | None = None, until: datetime | None = None) -> UsageReport:
        return _required(self._send(_usage(since, until), UsageReport))

    def ready(self) -> Readiness:
        return _required(self._send(_Request("GET", "/readyz"), Readiness))

    def metrics(self) -> str:
        response = self._http.get("/metrics")
        _Calls.parse(response, None)
        return response.text


class AsyncSpartanClient:
    """asyncio client (the load generator's)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_connections: int | None = 100,
        tenant: str | None = None,
    ) -> None:
        """``max_connections`` caps concurrent connections (None: one per request in flight)."""
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=_headers(api_key),
            params=_params(tenant),
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=KEEPALIVE_S,
            ),
        )

    async def __aenter__(self) -> AsyncSpartanClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, request: _Request, model: type[M] | None) -> M | None:
        response = await self._http.request(
            request.method,
            request.url,
            json=request.json,
            content=request.content,
            headers=request.headers,
            params=request.params,
        )
        return _Calls.parse(response, model)

    async def _download(self, request: _Request) -> bytes:
        response = await self._http.request(request.method, request.url)
        _Calls.parse(response, None)
        return response.content

    async def classify(
        self,
        task: str,
        inputs: Inputs,
        explain: Explain = "none",
        top_k: int | None = None,
        exit_threshold: float | None = None,
    ) -> ClassifyResponse:
        request = _Calls.classify(task, inputs, explain, "spartan", top_k, exit_threshold)
        return _required(await self._send(request, ClassifyResponse))

    async def classify_pipeline(self, task: str, inputs: Inputs, top_k: int | None = None) -> PipelineAnswer:
        request = _Calls.classify(task, inputs, "none", "pipeline", top_k)
        return _required(await self._send(request, PipelineAnswer))

    async def list_versions(self, task: str) -> VersionList:
        return _required(await self._send(_Calls.versions(task), VersionList))

    async def download_version(self, task: str, version: int) -> bytes:
        return await self._download(_Calls.download(task, version))

    async def restore_version(self, task: str, version: int, if_match: int | None = None) -> MemoryInfo:
        return _required(await self._send(_Calls.restore(task, version, if_match), MemoryInfo))

    async def put_candidate(
        self,
        task: str,
        data: bytes,
        mode: RolloutMode = "shadow",
        share: float = 0.1,
        if_match: int | None = None,
    ) -> CandidateStatus:
        request = _Calls.put_candidate(task, data, mode, share, if_match)
        return _required(await self._send(request, CandidateStatus))

    async def get_candidate(self, task: str) -> CandidateStatus:
        request = _Request("GET", f"/v1/memories/{task}/candidate")
        return _required(await self._send(request, CandidateStatus))

    async def promote_candidate(self, task: str, if_match: int | None = None) -> MemoryInfo:
        return _required(await self._send(_Calls.end_candidate(task, True, if_match), MemoryInfo))

    async def abort_candidate(self, task: str, if_match: int | None = None) -> None:
        await self._send(_Calls.end_candidate(task, False, if_match), None)

    async def put_memory(self, task: str, data: bytes, if_match: int | None = None) -> MemoryInfo:
        return _required(await self._send(_Calls.put_memory(task, data, if_match), MemoryInfo))

    async def get_memory(self, task: str) -> MemoryInfo:
        return _required(await self._send(_Request("GET", f"/v1/memories/{task}"), MemoryInfo))

    async def delete_memory(self, task: str, if_match: int | None = None) -> None:
        await self._send(_Calls.delete_memory(task, if_match), None)

    async def list_memories(self, page_size: int = 100) -> AsyncIterator[MemoryInfo]:
        after: str | None = None
        while True:
            page = _required(await self._send(_Calls.list_page(after, page_size), MemoryPage))
            for item in page.items:
                yield item
            if page.next is None:
                return
            after = page.next

    async def usage(self, since: datetime | None = None, until: datetime | None = None) -> UsageReport:
        return _required(await self._send(_usage(since, until), UsageReport))

    async def ready(self) -> Readiness:
        return _required(await self._send(_Request("GET", "/readyz"), Readiness))

    async def metrics(self) -> str:
        response = await self._http.get("/metrics")
        _Calls.parse(response, None)
        return response.text


def _required(value: M | None) -> M:
    assert value is not None, "a model was requested, so parse() returned one"
    return value
