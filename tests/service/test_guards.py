"""Slow and hostile clients against a real server (service.guards): headers dribbled a byte at a
time, a connection that sends nothing, a flood of idle connections, a body sent too slowly, and
a client that never reads its response. Others keep being served throughout."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from service.guards import ClientTimeouts
from tests.service.conftest import RunningService


def _connect(service: RunningService) -> socket.socket:
    host, port = service.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


@contextmanager
def _served_meanwhile(service: RunningService) -> Iterator[list[int]]:
    """A well-behaved client asking /healthz every 20 ms while the block runs: its statuses."""
    statuses: list[int] = []
    stop = threading.Event()

    def ask() -> None:
        with httpx.Client(base_url=service.url, timeout=5) as client:
            for _ in range(1000):  # bounded
                if stop.is_set():
                    return
                statuses.append(client.get("/healthz").status_code)
                time.sleep(0.02)

    worker = threading.Thread(target=ask)
    worker.start()
    try:
        yield statuses
    finally:
        stop.set()
        worker.join(10)


@pytest.fixture
def guarded(service_factory: Callable[..., RunningService]) -> RunningService:
    return service_factory(header_timeout_s=0.5, body_timeout_s=0.5, max_connections=300)


def test_headers_dribbled_a_byte_at_a_time_get_408(guarded: RunningService) -> None:
    with _served_meanwhile(guarded) as statuses:
        sock = _connect(guarded)
        started = time.monotonic()
        closed = False
        for byte in b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 100:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.05)
            if time.monotonic() - started > 10:
                break
        answer = _read_until_closed(sock) if not closed else b""
        assert closed or answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.monotonic() - started < 10, "closed at the header timeout, not at the end of the headers"
    assert statuses, "the other client was served meanwhile"
    assert set(statuses) == {200}


def test_a_connection_that_sends_nothing_is_closed(guarded: RunningService) -> None:
    sock = _connect(guarded)
    started = time.monotonic()
    assert _read_until_closed(sock).startswith(b"HTTP/1.1 408")
    assert 0.4 < time.monotonic() - started < 10


def test_idle_connections_beyond_the_cap_are_closed_and_others_served(guarded: RunningService) -> None:
    flood = [_connect(guarded) for _ in range(280)]  # under max_connections=300: held until the timeout
    try:
        with httpx.Client(base_url=guarded.url, timeout=5) as client:
            assert [client.get("/healthz").status_code for _ in range(10)] == [200] * 10
        extra = [_connect(guarded) for _ in range(40)]  # past the cap: closed at once
        refused = 0
        for sock in extra:
            sock.settimeout(2)
            try:
                refused += sock.recv(1) == b""
            except (ConnectionResetError, TimeoutError):
                refused += 1
            sock.close()
        assert refused >= 15, f"only {refused} of 40 connections past the cap were closed"
    finally:
        for sock in flood:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(f"{guarded.url}/healthz").status_code == 200, "served again once the flood is gone"


def test_a_body_sent_too_slowly_gets_408(guarded: RunningService) -> None:
    sock = _connect(guarded)
    sock.sendall(
        b"PUT /v1/memories/t HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\n"
        b"content-length: 100000\r\n\r\n" + b"x" * 10
    )
    started = time.monotonic()
    answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"application/problem+json" in answer
    assert b"body_timeout_s" in answer
    assert time.monotonic() - started < 10
    assert httpx.get(f"{guarded.url}/v1/memories/t").status_code == 404, "nothing was stored"


def test_a_client_that_never_reads_its_response_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """The middleware alone: an ASGI send that never completes (a full socket) is given up."""
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * 10, "more_body": True})
        await send({"type": "http.response.body", "body": b"y"})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def stuck_send(message: Message) -> None:
        if len(sent) == 2:
            await asyncio.Event().wait()  # the client's window is full and stays full
        sent.append(message)

    async def run() -> float:
        started = time.monotonic()
        scope = {"type": "http", "method": "GET", "path": "/big"}
        await ClientTimeouts(app, body_s=5, send_s=0.3)(scope, receive, stuck_send)
        return time.monotonic() - started

    assert 0.25 < asyncio.run(run()) < 2
    assert len(sent) == 2
    assert "took no response data for 0.3 s" in caplog.text
