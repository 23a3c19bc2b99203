"""The runtime without HTTP: single-flight registry reads, catalog sync between replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from memories.backbone import Backbone
from service.auth import Caller
from service.engine import Engine
from service.registry.files import FileRegistry
from service.runtime import Runtime
from service.settings import ServiceSettings
from tests.conftest import make_memfile

ADMIN = Caller("ops", admin=True)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class CountingFileRegistry(FileRegistry):
    """The real file registry, counting version reads."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, poll_interval=0.05)
        self.reads = 0

    async def read(self, task: str, version: int) -> bytes:
        self.reads += 1
        return await super().read(task, version)


async def _runtime(backbone: Backbone, registry: FileRegistry) -> Runtime:
    settings = ServiceSettings(backbone=backbone.name, registry_dir=registry.root)
    runtime = Runtime(settings, backbone, registry, Engine(backbone, threads=1))
    await runtime.start()
    return runtime


@pytest.fixture
async def pair(
    roberta_tiny: Backbone, tmp_path: Path
) -> AsyncIterator[tuple[Runtime, Runtime, CountingFileRegistry]]:
    counting = CountingFileRegistry(tmp_path)
    first = await _runtime(roberta_tiny, FileRegistry(tmp_path, poll_interval=0.05))
    second = await _runtime(roberta_tiny, counting)
    yield first, second, counting
    await first.stop()
    await second.stop()


async def _eventually(check: object, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.mark.anyio
async def test_concurrent_first_requests_read_the_registry_once(
    pair: tuple[Runtime, Runtime, CountingFileRegistry], roberta_tiny: Backbone
) -> None:
    writer, reader, counting = pair
    await writer.upload("t", make_memfile(roberta_tiny).to_bytes(), ADMIN, None)
    await _eventually(lambda: "t" in reader.catalog)
    memories = await asyncio.gather(*(reader.memory("t", ADMIN) for _ in range(20)))
    assert counting.reads == 1
    assert all(m is memories[0] for m in memories)
    assert (reader.cache.stats.loads, reader.cache.stats.misses) == (1, 20)


@pytest.mark.anyio
async def test_replicas_follow_each_others_writes_and_deletes(
    pair: tuple[Runtime, Runtime, CountingFileRegistry], roberta_tiny: Backbone
) -> None:
    writer, reader, _ = pair
    await writer.upload("t", make_memfile(roberta_tiny, seed=1).to_bytes(), ADMIN, None)
    await _eventually(lambda: "t" in reader.catalog)
    assert (await reader.memory("t", ADMIN)).version == 1
    await writer.upload("t", make_memfile(roberta_tiny, seed=2).to_bytes(), ADMIN, None)
    await _eventually(lambda: reader.catalog["t"].version == 2)
    assert (await reader.memory("t", ADMIN)).version == 2
    assert reader.cache.resident() == [("t", 2)], "the old version left the cache"
    await writer.delete("t", ADMIN, None)
    await _eventually(lambda: "t" not in reader.catalog)
    assert len(reader.cache) == 0
