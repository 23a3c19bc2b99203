"""Limits on what one client can hold: connections, slow headers, slow bodies, unread responses.

uvicorn closes a keep-alive connection that stays idle (``keep_alive_s``), but a connection that
sends its request line and headers a byte at a time, or nothing at all, is never closed, and a
body or a response may take forever. Each would hold a socket, a task or a buffer; a few
thousand of them starve everyone else. The guards:

* :func:`guarded_protocol`: uvicorn's httptools protocol with ``max_connections`` (a connection
  beyond it is closed at once) and ``header_timeout_s``: from a connection's start, or a request's
  first byte, to the end of its headers; past it the client gets ``408`` and the connection closes.
* :class:`ClientTimeouts`: ASGI middleware. The body must arrive within ``body_timeout_s`` of the
  headers, else :class:`~service.errors.RequestTimeoutError` (408, the connection closes). Each
  part of the response must be taken within ``send_timeout_s``, else the connection is dropped
  (the answer cannot be completed; logged).
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import RequestTimeoutError

log = logging.getLogger("spartan.guards")

REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


def guarded_protocol(max_connections: int, header_timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a connection cap and a deadline for request headers."""

    class GuardedProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning("%d connections open (max_connections): closing a new one", len(self.connections))
                transport.close()
                return
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _headers_too_slow(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.write(REQUEST_TIMEOUT)
                self.transport.close()

    return GuardedProtocol


class ClientTimeouts:
    """ASGI middleware: the request body within ``body_s``, each response part taken within ``send_s``."""

    def __init__(self, app: ASGIApp, body_s: float, send_s: float) -> None:
        self.app = app
        self.body_s = body_s
        self.send_s = send_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_s
        body_done = False

        async def receive_in_time() -> Message:
            nonlocal body_done
            if body_done:  # after the body: waiting for a disconnect has no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeoutError(
                    f"the request body did not arrive within {self.body_s:g} s (body_timeout_s); send it "
                    "faster, or ask the operator to raise the limit"
                ) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def send_in_time(message: Message) -> None:
            try:
                async with asyncio.timeout(self.send_s):
                    await send(message)
            except TimeoutError:
                raise _NotReading from None

        try:
            await self.app(scope, receive_in_time, send_in_time)
        except _NotReading:
            log.warning(
                "%s %s: the client took no response data for %g s (send_timeout_s); connection dropped",
                scope.get("method"),
                scope.get("path"),
                self.send_s,
            )


class _NotReading(Exception):
    """The client took no part of its response within the send timeout."""
