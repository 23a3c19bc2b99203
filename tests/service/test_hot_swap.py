"""Hot swap across two real `spartan serve` processes sharing the Redis registry, under load."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtest.launcher import ServerProcess, start_server
from memories.backbones import load_backbone
from tests.conftest import make_memfile
from tests.service.registry.test_registries import REDIS_URL, _purge


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[str]]:
    import asyncio

    prefix = f"hotswap-{uuid.uuid4().hex[:10]}"
    settings = {
        "backbone": "roberta-tiny-random",
        "registry": "redis",
        "redis_url": REDIS_URL,
        "redis_prefix": prefix,
        "threads": "1",
    }
    servers: list[ServerProcess] = []
    try:
        for i in range(2):
            servers.append(start_server(settings, tmp_path / f"replica-{i}.log"))
        yield [server.url for server in servers]
    finally:
        for server in servers:
            server.stop(30)
        asyncio.run(_purge(prefix))


def test_put_on_one_replica_reaches_both_under_load(replicas: list[str]) -> None:
    backbone = load_backbone("roberta-tiny-random")
    old, new = make_memfile(backbone, seed=1).to_bytes(), make_memfile(backbone, seed=2).to_bytes()
    headers = {"content-type": "application/octet-stream"}
    assert httpx.put(f"{replicas[0]}/v1/memories/live", content=old, headers=headers).json()["version"] == 1

    stop = threading.Event()
    # (request start, request end, version) per replica; threads record answers in any order
    seen: dict[str, list[tuple[float, float, int]]] = {url: [] for url in replicas}
    failures: list[str] = []

    def load(url: str) -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            for _ in range(5000):  # bounded: stops by itself even if the test hangs
                if stop.is_set():
                    return
                started = time.monotonic()
                response = client.post("/v1/live/classify", json={"inputs": ["some text", "more text"]})
                if response.status_code != 200:
                    failures.append(f"{url}: {response.status_code} {response.text}")
                    continue
                seen[url].append((started, time.monotonic(), response.json()["version"]))

    workers = [threading.Thread(target=load, args=(url,)) for url in replicas for _ in range(2)]
    for worker in workers:
        worker.start()
    time.sleep(1.0)
    put = httpx.put(f"{replicas[0]}/v1/memories/live", content=new, headers=headers)
    swapped_at = time.monotonic()
    assert put.json()["version"] == 2
    time.sleep(2.0)
    stop.set()
    for worker in workers:
        worker.join(30)

    assert failures == []
    for url, answers in seen.items():
        answers.sort()
        versions = [v for _, _, v in answers]
        assert versions[0] == 1, f"{url} did not serve version 1 before the swap"
        assert versions[-1] == 2, f"{url} never served version 2"
        first_new = next(start for start, _, v in answers if v == 2)
        assert first_new - swapped_at < 1.0, f"{url} took {first_new - swapped_at:.2f}s to switch"
        # Requests in flight together may finish in any order; one that starts after a version 2
        # answer has arrived must not get version 1 (the replica never goes back).
        first_v2_done = min(end for _, end, v in answers if v == 2)
        late_old = [start for start, _, v in answers if v == 1 and start > first_v2_done]
        assert late_old == [], f"{url} went back to version 1 after answering with version 2"
    on_writer = [v for start, _, v in seen[replicas[0]] if start > swapped_at]
    assert set(on_writer) == {2}, "requests started after the PUT returned get version 2 on its replica"


def test_an_unknown_id_is_forgotten_on_every_replica_once_created(replicas: list[str]) -> None:
    backbone = load_backbone("roberta-tiny-random")
    first, second = (httpx.Client(base_url=url, timeout=10) for url in replicas)
    for _ in range(5):
        assert first.post("/v1/newcomer/classify", json={"inputs": "x"}).status_code == 404
    hits = [
        line
        for line in first.get("/metrics").text.splitlines()
        if line.startswith("spartan_unknown_task_hits")
    ]
    assert hits == ["spartan_unknown_task_hits_total 4.0"], "four misses answered without the registry"
    data = make_memfile(backbone).to_bytes()
    created = second.put(
        "/v1/memories/newcomer", content=data, headers={"content-type": "application/octet-stream"}
    )
    assert created.status_code == 200
    started = time.monotonic()
    while first.post("/v1/newcomer/classify", json={"inputs": "x"}).status_code == 404:
        assert time.monotonic() - started < 2.0, "the create did not reach the other replica's negative cache"
        time.sleep(0.02)


def test_a_rollback_on_one_replica_reaches_the_other(replicas: list[str]) -> None:
    backbone = load_backbone("roberta-tiny-random")
    writer, reader = (httpx.Client(base_url=url, timeout=10) for url in replicas)
    headers = {"content-type": "application/octet-stream"}
    for seed in (1, 2):
        writer.put("/v1/memories/live", content=make_memfile(backbone, seed=seed).to_bytes(), headers=headers)
    body = {"inputs": ["some text"]}
    started = time.monotonic()
    while (answer := reader.post("/v1/live/classify", json=body).json())["version"] != 2:
        assert time.monotonic() - started < 2.0, "version 2 did not reach the other replica"
        time.sleep(0.02)
    good = answer["predictions"]
    restored = writer.post("/v1/memories/live/versions/1/restore", headers={"if-match": "2"})
    assert restored.status_code == 200, restored.text
    assert (restored.json()["version"], restored.json()["restored_from"]) == (3, 1)
    started = time.monotonic()
    while (answer := reader.post("/v1/live/classify", json=body).json())["version"] != 3:
        assert time.monotonic() - started < 2.0, "the rollback did not reach the other replica"
        time.sleep(0.02)
    assert answer["predictions"] != good, "version 3 answers as version 1, not as version 2"
    first = writer.get("/v1/memories/live/versions/1/file").content
    assert reader.get("/v1/memories/live/versions/3/file").content == first


def test_a_canary_staged_on_one_replica_serves_on_the_other(replicas: list[str]) -> None:
    backbone = load_backbone("roberta-tiny-random")
    writer, reader = (httpx.Client(base_url=url, timeout=10) for url in replicas)
    octet = {"content-type": "application/octet-stream"}
    writer.put("/v1/memories/live", content=make_memfile(backbone, seed=1).to_bytes(), headers=octet)
    staged = writer.put(
        "/v1/memories/live/candidate",
        content=make_memfile(backbone, seed=2).to_bytes(),
        headers=octet,
        params={"mode": "canary", "share": 1.0},
    )
    assert staged.status_code == 200, staged.text

    def served_by(client: httpx.Client) -> int:
        version: int = client.post("/v1/live/classify", json={"inputs": ["x"]}).json()["version"]
        return version

    started = time.monotonic()
    while served_by(reader) != 2:
        assert time.monotonic() - started < 2.0, "the canary did not reach the other replica"
        time.sleep(0.02)
    writer.delete("/v1/memories/live/candidate")
    started = time.monotonic()
    while served_by(reader) != 1:
        assert time.monotonic() - started < 2.0, "the abort did not reach the other replica"
        time.sleep(0.02)
