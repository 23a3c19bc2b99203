"""Redis goes down and comes back: cached tasks keep classifying, writes answer 503, nothing is lost.

The test runs its own redis-server (append-only file in a temp dir) so it can stop and restart
it without touching the shared one.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from loadtest.launcher import free_port
from memories.backbone import Backbone
from tests.conftest import make_memfile
from tests.service.conftest import RunningService, eventually

OCTET = {"content-type": "application/octet-stream"}


class RedisServer:
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


def test_outage_keeps_cached_tasks_serving_and_loses_nothing(
    redis_server: RedisServer, service_factory: Callable[..., RunningService], roberta_tiny: Backbone
) -> None:
    service = service_factory(registry="redis", redis_url=redis_server.url)
    http = service.client()
    first = make_memfile(roberta_tiny, seed=1).to_bytes()
    assert http.put("/v1/memories/t", content=first, headers=OCTET).json()["version"] == 1
    before = http.post("/v1/t/classify", json={"inputs": "x"}).json()

    redis_server.stop()
    during = http.post("/v1/t/classify", json={"inputs": "x"})
    assert during.status_code == 200
    assert during.json() == before, "the cached task still classifies, with the same version"
    upload = http.put("/v1/memories/t", content=make_memfile(roberta_tiny, seed=2).to_bytes(), headers=OCTET)
    assert upload.status_code == 503
    assert upload.headers["retry-after"] == "1"
    assert "Redis registry is unavailable" in upload.json()["detail"]
    ready = http.get("/readyz").json()
    assert ready["registry"] == "unavailable"
    assert ready["degraded"]
    eventually(
        lambda: "spartan_registry_up 0.0" in http.get("/metrics").text, "metrics show the outage", 15.0, 0.1
    )

    redis_server.start()
    eventually(
        lambda: http.get("/readyz").json()["degraded"] == [], "the service notices Redis is back", 15.0, 0.1
    )
    assert "spartan_registry_up 1.0" in http.get("/metrics").text
    assert http.get("/v1/memories/t").json()["version"] == 1, "the stored version survived the outage"
    again = http.put("/v1/memories/t", content=make_memfile(roberta_tiny, seed=2).to_bytes(), headers=OCTET)
    assert again.json()["version"] == 2
    assert http.post("/v1/t/classify", json={"inputs": "x"}).json()["version"] == 2
