"""Admission control on a real server whose engine is really busy (RoBERTa-base, one thread).

A batch of 32 rows of ~128 tokens takes seconds on one thread, far longer than the short
deadlines used here, so the outcomes do not depend on the machine's speed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest

from loadtest.launcher import free_port
from memories.backbone import Backbone
from memories.backbones import load_backbone
from service.settings import ServiceSettings
from tests.conftest import make_memfile
from tests.service.conftest import RunningService, start_service

LONG = "a fairly long sentence about nothing in particular, " * 12  # ~128 tokens after truncation


@pytest.fixture(scope="module")
def roberta_base() -> Backbone:
    return load_backbone("roberta-base-random")


@pytest.fixture
def busy_service(
    roberta_base: Backbone, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., RunningService]:
    started = []

    def make(**overrides: object) -> RunningService:
        fields: dict[str, object] = {
            "backbone": roberta_base.name,
            "registry_dir": tmp_path_factory.mktemp("registry"),
            "port": free_port(),
            "threads": 1,
            "max_inputs": 32,
            "queue_size": 40,
            "tenant_queue_rows": 40,  # one tenant here: the whole queue is its share
            "request_timeout_s": 600.0,  # admitted requests must never time out here, however slow the host
        }
        fields.update(overrides)
        running, thread = start_service(ServiceSettings(**fields), roberta_base)  # type: ignore[arg-type]
        started.append((running, thread))
        memory = make_memfile(roberta_base).to_bytes()
        with running.client() as http:
            put = http.put(
                "/v1/memories/t", content=memory, headers={"content-type": "application/octet-stream"}
            )
            assert put.status_code == 200, put.text
        return running

    yield make
    for running, thread in started:
        running.server.should_exit = True
        thread.join(120)


def _classify_in_background(url: str, results: list[httpx.Response]) -> threading.Thread:
    def run() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            results.append(http.post("/v1/t/classify", json={"inputs": [LONG] * 32}))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_busy(http: httpx.Client) -> None:
    """Until the engine has taken the first request and is running it (a batch of seconds)."""
    for _ in range(600):
        metrics = http.get("/metrics").text
        rows = [line for line in metrics.splitlines() if line.startswith("spartan_engine_queue_depth ")]
        if rows and float(rows[0].split()[1]) == 0 and "spartan_cache_hits_total 1.0" in metrics:
            time.sleep(0.2)  # 40x the engine's 5 ms collection window: the batch is closed and running
            return
        time.sleep(0.05)
    raise AssertionError("the first request never reached the engine")


def test_full_queue_answers_429_with_retry_after(busy_service: Callable[..., RunningService]) -> None:
    service = busy_service()
    first: list[httpx.Response] = []
    worker = _classify_in_background(service.url, first)
    with service.client() as http:
        _wait_busy(http)
        second: list[httpx.Response] = []
        queued = _classify_in_background(service.url, second)
        for _ in range(200):  # until the second request's 32 rows are queued
            if "spartan_engine_queue_depth 32.0" in http.get("/metrics").text:
                break
        third = http.post("/v1/t/classify", json={"inputs": [LONG] * 32})
        assert third.status_code == 429
        assert third.headers["retry-after"] == "1"
        assert "the queue is full (40 texts)" in third.json()["detail"]
    worker.join(120)
    queued.join(120)
    assert first[0].status_code == 200
    assert second[0].status_code == 200, "admitted requests are served"


def test_deadline_passed_answers_504(busy_service: Callable[..., RunningService]) -> None:
    service = busy_service(request_timeout_s=0.5)
    first: list[httpx.Response] = []
    worker = _classify_in_background(service.url, first)
    with service.client() as http:
        _wait_busy(http)  # else the short request could join the first batch and finish in time
        response = http.post("/v1/t/classify", json={"inputs": "short"})
        assert response.status_code == 504
        assert "deadline passed" in response.json()["detail"]
    worker.join(120)


def test_shutdown_finishes_admitted_requests(busy_service: Callable[..., RunningService]) -> None:
    service = busy_service()
    results: list[httpx.Response] = []
    worker = _classify_in_background(service.url, results)
    with service.client() as http:
        _wait_busy(http)
    service.server.should_exit = True
    worker.join(120)
    assert results[0].status_code == 200
    assert len(results[0].json()["predictions"]) == 32
