"""The typed clients against a real server: the same calls, sync and async."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from memories.backbone import Backbone
from service.client import AsyncSpartanClient, ServiceHTTPError, SpartanClient
from tests.conftest import make_memfile
from tests.service.conftest import RunningService


def test_sync_client_round_trip(
    service_factory: Callable[..., RunningService], roberta_tiny: Backbone
) -> None:
    service = service_factory()
    with SpartanClient(service.url) as client:
        first = make_memfile(roberta_tiny).to_bytes()
        assert client.put_memory("a", first, if_match=0).version == 1
        client.put_memory("b", make_memfile(roberta_tiny, labels=()).to_bytes())
        single = client.classify("a", "some text")
        pairs = client.classify("b", [("first", "second")], explain="last_layer")
        assert single.predictions[0].label in ("negative", "positive")
        assert pairs.predictions[0].value is not None
        assert pairs.predictions[0].parents is not None
        assert [m.task for m in client.list_memories(page_size=1)] == ["a", "b"]
        assert client.get_memory("a").version == 1
        with pytest.raises(ServiceHTTPError) as conflict:
            client.put_memory("a", make_memfile(roberta_tiny).to_bytes(), if_match=0)
        assert (conflict.value.status, conflict.value.detail) == (412, "task 'a' is at version 1, not 0")
        assert conflict.value.problem_type == "tag:spartan-serve,2026:version-conflict"
        assert client.download_version("a", 1) == first
        client.put_memory("a", make_memfile(roberta_tiny, seed=7).to_bytes())
        assert [v.version for v in client.list_versions("a").items] == [2, 1]
        restored = client.restore_version("a", 1, if_match=2)
        assert (restored.version, restored.restored_from) == (3, 1)
        assert client.download_version("a", 3) == first
        top = client.classify("a", ["x", "y"], top_k=1).predictions
        assert all(p.scores is not None and list(p.scores) == [p.label] for p in top)
        assert [item.label for item in client.classify_pipeline("a", ["x", "y"]).root] == [
            p.label for p in top
        ]
        staged = client.put_candidate("a", make_memfile(roberta_tiny, seed=9).to_bytes(), "canary", 1.0, 3)
        assert (staged.current, staged.rollout.version, staged.rollout.mode) == (3, 4, "canary")
        assert client.classify("a", "x").version == 4
        assert client.get_candidate("a").replica.served["candidate"].requests == 1
        assert client.promote_candidate("a", if_match=3).version == 4
        client.put_candidate("a", make_memfile(roberta_tiny, seed=10).to_bytes())
        client.abort_candidate("a")
        with pytest.raises(ServiceHTTPError) as none:
            client.get_candidate("a")
        assert none.value.problem_type == "tag:spartan-serve,2026:task-not-found"
        client.delete_memory("a", if_match=4)
        with pytest.raises(ServiceHTTPError) as missing:
            client.classify("a", "x")
        assert missing.value.status == 404
        assert client.ready().ready
        assert "spartan_engine_rows_total" in client.metrics()


def test_async_client_round_trip(
    service_factory: Callable[..., RunningService], roberta_tiny: Backbone
) -> None:
    service = service_factory()

    async def scenario() -> None:
        async with AsyncSpartanClient(service.url) as client:
            await client.put_memory("a", make_memfile(roberta_tiny).to_bytes())
            answers = await asyncio.gather(*(client.classify("a", [f"text {i}"]) for i in range(8)))
            assert {a.version for a in answers} == {1}
            assert [m.task async for m in client.list_memories()] == ["a"]
            assert (await client.get_memory("a")).version == 1
            await client.put_memory("a", make_memfile(roberta_tiny, seed=3).to_bytes())
            assert (await client.restore_version("a", 1)).restored_from == 1
            versions = await client.list_versions("a")
            assert (versions.current, [v.version for v in versions.items]) == (3, [3, 2, 1])
            assert await client.download_version("a", 3) == await client.download_version("a", 1)
            staged = await client.put_candidate("a", make_memfile(roberta_tiny, seed=5).to_bytes())
            assert (await client.get_candidate("a")).rollout.mode == "shadow"
            await client.abort_candidate("a", if_match=staged.current)
            piped = await client.classify_pipeline("a", "x", top_k=2)
            assert [len(piped.root)] == [2]
            await client.delete_memory("a")
            with pytest.raises(ServiceHTTPError) as missing:
                await client.classify("a", "x")
            assert missing.value.status == 404
            assert (await client.ready()).ready

    asyncio.run(scenario())
