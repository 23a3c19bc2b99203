"""Request bodies read by routes themselves (a memory file, a v2 request with binary tensors),
refused with 413 as soon as they pass their limit: never held whole before the check."""

from __future__ import annotations

from fastapi import Request

from service.errors import PayloadTooLargeError


async def read_limited(request: Request, limit: int, what: str) -> bytes:
    """The body, or PayloadTooLargeError naming ``what`` once it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"{what} is {declared} bytes; the limit is {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"{what} exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
