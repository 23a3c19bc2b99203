"""Storage faults against real servers: the file registry on a small tmpfs mounted by the test (as
root) and a private Redis held at its maxmemory. A full registry answers 507, a read-only or
vanished one 503; nothing half-written is left, the connection stays usable, readiness names the
fault, and stored tasks keep classifying."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from memories.backbone import Backbone
from tests.conftest import make_memfile
from tests.service.conftest import RedisServer, RunningService

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root"
)

OCTET = {"content-type": "application/octet-stream"}


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: room for a handful of tiny memories."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk))
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False, capture_output=True)


def _leftovers(root: Path) -> list[Path]:
    """Temp files of writes that did not complete."""
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def _fill(http: httpx.Client, blob: bytes) -> tuple[list[str], httpx.Response]:
    """Upload new tasks until one is refused; (the stored tasks, the refusal)."""
    stored = []
    for i in range(200):
        answer = http.put(f"/v1/memories/t{i}", content=blob, headers=OCTET)
        if answer.status_code != 200:
            return stored, answer
        stored.append(f"t{i}")
    raise AssertionError("200 memories fit into 256 KiB: the disk never filled")


@needs_root
def test_a_full_disk_answers_507_and_loses_nothing(
    small_disk: Path, service_factory: Callable[..., RunningService], roberta_tiny: Backbone
) -> None:
    registry = small_disk / "registry"
    service = service_factory(registry_dir=registry)
    blob = make_memfile(roberta_tiny).to_bytes()
    with service.client() as http:  # one connection for everything below
        stored, refused = _fill(http, blob)
        assert stored, "the first memory fits"
        assert refused.status_code == 507, refused.text
        assert "registry is full" in refused.json()["detail"]
        again = http.put(
            "/v1/memories/t0", content=make_memfile(roberta_tiny, seed=2).to_bytes(), headers=OCTET
        )
        assert again.status_code == 507, "a new version of a stored task does not fit either"
        assert http.post(f"/v1/{stored[0]}/classify", json={"inputs": "x"}).status_code == 200
        assert http.get(f"/v1/memories/{stored[0]}").json()["version"] == 1, "the old version is current"
        failed = f"t{len(stored)}"
        assert http.get(f"/v1/memories/{failed}").status_code == 404, "the refused upload left no task"
        ready = http.get("/readyz").json()
        assert any("registry is full" in line for line in ready["degraded"]), ready
        assert http.delete(f"/v1/memories/{stored[-1]}").status_code == 204, "a delete frees space"
        assert http.put(f"/v1/memories/{failed}", content=blob, headers=OCTET).status_code == 200
    assert _leftovers(registry) == []
    with service.client() as fresh:
        assert fresh.post(f"/v1/{stored[0]}/classify", json={"inputs": "x"}).status_code == 200


@needs_root
def test_a_read_only_registry_answers_503_and_keeps_serving(
    small_disk: Path, service_factory: Callable[..., RunningService], roberta_tiny: Backbone
) -> None:
    service = service_factory(registry_dir=small_disk / "registry")
    blob = make_memfile(roberta_tiny).to_bytes()
    with service.client() as http:
        assert http.put("/v1/memories/t", content=blob, headers=OCTET).status_code == 200
        _mount("-o", "remount,ro", str(small_disk))
        refused = http.put("/v1/memories/u", content=blob, headers=OCTET)
        assert refused.status_code == 503, refused.text
        assert "read-only" in refused.json()["detail"]
        assert refused.headers["retry-after"]
        assert http.delete("/v1/memories/t").status_code == 503
        assert http.post("/v1/t/classify", json={"inputs": "x"}).status_code == 200
        ready = http.get("/readyz").json()
        assert ready["registry"] == "unavailable", ready
        assert any("read-only" in line for line in ready["degraded"]), ready
        _mount("-o", "remount,rw", str(small_disk))
        assert http.put("/v1/memories/u", content=blob, headers=OCTET).status_code == 200, "it recovers"


def test_a_vanished_registry_answers_503_and_is_not_recreated(
    service_factory: Callable[..., RunningService], roberta_tiny: Backbone, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    service = service_factory(registry_dir=registry)
    blob = make_memfile(roberta_tiny).to_bytes()
    with service.client() as http:
        assert http.put("/v1/memories/t", content=blob, headers=OCTET).status_code == 200
        shutil.rmtree(registry)
        refused = http.put("/v1/memories/u", content=blob, headers=OCTET)
        assert refused.status_code == 503, refused.text
        assert "gone" in refused.json()["detail"]
        assert not registry.exists(), "an upload does not silently start an empty registry"
        assert http.post("/v1/t/classify", json={"inputs": "x"}).status_code == 200
        assert http.get("/readyz").json()["registry"] == "unavailable"


def test_redis_at_its_maxmemory_answers_507_and_keeps_serving(
    redis_server: RedisServer, service_factory: Callable[..., RunningService], roberta_tiny: Backbone
) -> None:
    service = service_factory(registry="redis", redis_url=redis_server.url)
    blob = make_memfile(roberta_tiny).to_bytes()
    with service.client() as http:
        assert http.put("/v1/memories/t", content=blob, headers=OCTET).status_code == 200
        used = int(redis_server.cli("memory", "stats").split("total.allocated\n")[1].split("\n")[0])
        redis_server.cli("config", "set", "maxmemory-policy", "noeviction")
        redis_server.cli("config", "set", "maxmemory", str(used + 1024))
        refused = http.put("/v1/memories/u", content=blob, headers=OCTET)
        assert refused.status_code == 507, refused.text
        assert "maxmemory" in refused.json()["detail"]
        assert http.post("/v1/t/classify", json={"inputs": "x"}).status_code == 200
        assert http.get("/v1/memories/u").status_code == 404, "nothing of the refused upload is kept"
        redis_server.cli("config", "set", "maxmemory", "0")
        assert http.put("/v1/memories/u", content=blob, headers=OCTET).status_code == 200
