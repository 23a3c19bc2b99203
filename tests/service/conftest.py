"""A real uvicorn server on a free loopback port, running the app in a background thread."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from loadtest.launcher import free_port
from memories.backbone import Backbone
from service.app import create_app
from service.serve import uvicorn_config
from service.settings import ServiceSettings


def eventually(check: Callable[[], bool], what: str, seconds: float = 5.0, poll: float = 0.05) -> None:
    """Wait until ``check()`` holds; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(poll)


@dataclass
class RunningService:
    url: str
    settings: ServiceSettings
    server: uvicorn.Server

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


def start_service(
    settings: ServiceSettings, backbone: Backbone | None
) -> tuple[RunningService, threading.Thread]:
    """The app on a real uvicorn server in a thread; ``backbone`` None: the app loads its own."""
    server = uvicorn.Server(uvicorn_config(create_app(settings, backbone), settings, "warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the server thread died during start-up"
        assert time.monotonic() < deadline, "the server did not start within 30 s"
        time.sleep(0.02)
    return RunningService(f"http://127.0.0.1:{settings.port}", settings, server), thread


@pytest.fixture
def service_factory(roberta_tiny: Backbone, tmp_path: Path) -> Iterator[object]:
    started: list[tuple[RunningService, threading.Thread]] = []

    def make(**overrides: object) -> RunningService:
        fields: dict[str, object] = {
            "backbone": roberta_tiny.name,
            "registry_dir": tmp_path / f"registry-{len(started)}",
            "port": free_port(),
            "threads": 1,
            "max_wait_ms": 2.0,
            "cache_bytes": 256 << 20,  # not sized from the memory limit of wherever the tests run
            "cache_dir": tmp_path / "cache",  # LoRA-XS factors
        }
        fields.update(overrides)
        running = start_service(ServiceSettings(**fields), roberta_tiny)  # type: ignore[arg-type]
        started.append(running)
        return running[0]

    yield make
    for running, thread in started:
        running.server.should_exit = True
        thread.join(30)


class RedisServer:
    """A private redis-server (append-only file in ``folder``) a test may stop, restart or limit."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(100):
            if (
                subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout
                == b"PONG\n"
            ):
                return
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def cli(self, *args: str) -> str:
        done = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True)
        return done.stdout.strip()

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.stop()
