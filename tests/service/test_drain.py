"""SIGTERM drains a real server process: /readyz answers 503 at once while classify is still
served, then the process shuts down by itself after the drain time."""

from __future__ import annotations

import signal
import tempfile
import time
from pathlib import Path

import httpx

from loadtest.launcher import start_server
from memories.backbones import load_backbone
from tests.conftest import make_memfile

OCTET = {"content-type": "application/octet-stream"}


def test_sigterm_reports_not_ready_keeps_serving_then_exits() -> None:
    blob = make_memfile(load_backbone("roberta-tiny-random")).to_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        settings = {"backbone": "roberta-tiny-random", "registry_dir": f"{tmp}/registry", "drain_s": "2"}
        server = start_server(settings, Path(tmp) / "server.log")
        try:
            with httpx.Client(base_url=server.url, timeout=10) as http:
                assert http.put("/v1/memories/t", content=blob, headers=OCTET).status_code == 200
                assert http.get("/readyz").status_code == 200
                signalled = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
                time.sleep(0.3)
                ready = http.get("/readyz")
                assert ready.status_code == 503, ready.text
                assert ready.json()["ready"] is False
                assert any("draining" in line for line in ready.json()["degraded"])
                assert http.post("/v1/t/classify", json={"inputs": "x"}).status_code == 200, "still serving"
            code = server.process.wait(30)
            took = time.monotonic() - signalled
        finally:
            server.stop()
        # uvicorn re-raises the signal once it has shut down, so its parent sees how it ended
        assert code in (0, -signal.SIGTERM), (Path(tmp) / "server.log").read_text()[-2000:]
        assert 2.0 <= took < 20, f"exited {took:.1f} s after SIGTERM with a 2 s drain"
