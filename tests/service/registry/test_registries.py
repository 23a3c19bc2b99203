"""Both registry backends against the same contract; Redis is the real server at 127.0.0.1:6379."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.errors import (
    RegistryUnavailableError,
    StorageQuotaError,
    TaskNotFoundError,
    VersionConflictError,
)
from service.quotas import Quota
from service.registry.base import ChangeEvent, Registry, TaskState, UsageRecord, VersionInfo
from service.registry.files import FileRegistry
from service.registry.redis import RedisRegistry
from service.tasks import TaskRef

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _purge(prefix: str) -> None:
    from redis import asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture(params=["file", "redis"])
async def registry(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Registry]:
    if request.param == "file":
        reg: Registry = FileRegistry(tmp_path / "reg", keep_versions=2, poll_interval=0.1)
        yield reg
        await reg.close()
    else:
        prefix = f"test-{uuid.uuid4().hex[:12]}"
        reg = RedisRegistry(REDIS_URL, prefix, keep_versions=2)
        yield reg
        await reg.close()
        await _purge(prefix)


def ref(task: str, tenant: str = "acme") -> TaskRef:
    return TaskRef(tenant, task)


async def _put(
    reg: Registry, task: str, data: bytes, tenant: str = "acme", if_match: int | None = None
) -> int:
    sha = hashlib.sha256(data).hexdigest()
    info = await reg.put(ref(task, tenant), data, sha, {"labels": ["a", "b"]}, if_match)
    return info.version


@pytest.mark.anyio
async def test_put_read_list_and_versions(registry: Registry) -> None:
    assert await registry.current(ref("sst2")) is None
    assert await _put(registry, "sst2", b"one") == 1
    assert await _put(registry, "sst2", b"two") == 2
    assert await _put(registry, "bbc", b"news") == 1
    info = await registry.current(ref("sst2"))
    assert info is not None
    assert (info.version, info.size, info.owner, info.metadata) == (2, 3, "acme", {"labels": ["a", "b"]})
    assert info.sha256 == hashlib.sha256(b"two").hexdigest()
    assert await registry.read(ref("sst2"), 1) == b"one"
    assert await registry.read(ref("sst2"), 2) == b"two"
    assert [i.task for i in await registry.list("acme")] == ["bbc", "sst2"]
    assert [i.task for i in await registry.list("acme", after="bbc")] == ["sst2"]
    assert [i.task for i in await registry.list("acme", limit=1)] == ["bbc"]
    assert await registry.current_states() == {ref("sst2"): (2, 0), ref("bbc"): (1, 0)}


@pytest.mark.anyio
async def test_old_versions_are_pruned(registry: Registry) -> None:
    for data in (b"1", b"2", b"3"):
        await _put(registry, "t", data)
    assert await registry.read(ref("t"), 3) == b"3"
    assert await registry.read(ref("t"), 2) == b"2"
    with pytest.raises(TaskNotFoundError, match="has no version 1"):
        await registry.read(ref("t"), 1)


@pytest.mark.anyio
async def test_if_match_compare_and_set(registry: Registry) -> None:
    assert await _put(registry, "t", b"a", if_match=0) == 1
    with pytest.raises(VersionConflictError, match="at version 1, not 0"):
        await _put(registry, "t", b"b", if_match=0)
    assert await _put(registry, "t", b"b", if_match=1) == 2
    with pytest.raises(VersionConflictError, match="at version 2, not 1"):
        await _put(registry, "t", b"c", if_match=1)
    assert await registry.read(ref("t"), 2) == b"b"
    current = await registry.current(ref("t"))
    assert current is not None
    assert current.version == 2


@pytest.mark.anyio
async def test_concurrent_compare_and_set_has_one_winner(registry: Registry) -> None:
    await _put(registry, "t", b"base")
    results = await asyncio.gather(
        *(_put(registry, "t", f"w{i}".encode(), if_match=1) for i in range(6)), return_exceptions=True
    )
    assert sum(isinstance(r, int) for r in results) == 1
    assert sum(isinstance(r, VersionConflictError) for r in results) == 5


@pytest.mark.anyio
async def test_each_tenant_has_its_own_namespace(registry: Registry) -> None:
    assert await _put(registry, "sentiment", b"acme's", tenant="acme") == 1
    assert await _put(registry, "sentiment", b"globex's", tenant="globex", if_match=0) == 1
    assert await _put(registry, "sentiment", b"globex's 2", tenant="globex") == 2
    assert await _put(registry, "other", b"x", tenant="acme0") == 1  # sorts right after "acme/"
    assert await registry.read(ref("sentiment", "acme"), 1) == b"acme's"
    assert await registry.read(ref("sentiment", "globex"), 2) == b"globex's 2"
    mine = await registry.current(ref("sentiment", "acme"))
    assert mine is not None
    assert (mine.version, mine.owner) == (1, "acme")
    assert [(i.owner, i.task) for i in await registry.list("acme")] == [("acme", "sentiment")]
    assert [(i.owner, i.version) for i in await registry.list("globex")] == [("globex", 2)]
    assert await registry.list("initech") == []
    await registry.delete(ref("sentiment", "globex"))
    assert await registry.current(ref("sentiment", "acme")) is not None, "a delete stays in its namespace"
    assert await registry.current_states() == {
        ref("sentiment", "acme"): (1, 0),
        ref("other", "acme0"): (1, 0),
    }


@pytest.mark.anyio
async def test_delete_and_numbers_are_never_reused(registry: Registry) -> None:
    await _put(registry, "t", b"1")
    await _put(registry, "t", b"2")
    with pytest.raises(VersionConflictError):
        await registry.delete(ref("t"), if_match=1)
    await registry.delete(ref("t"), if_match=2)
    assert await registry.current(ref("t")) is None
    assert await registry.list("acme") == []
    with pytest.raises(TaskNotFoundError):
        await registry.read(ref("t"), 2)
    with pytest.raises(TaskNotFoundError, match="task 't' not found"):
        await registry.delete(ref("t"))
    assert await _put(registry, "t", b"again") == 3


@pytest.mark.anyio
async def test_changes_are_announced(registry: Registry) -> None:
    seen: list[ChangeEvent] = []

    async def watch() -> None:
        async for event in registry.events():
            seen.append(event)
            if len(seen) == 3:
                return

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.3)  # let the watcher subscribe
    await _put(registry, "t", b"1")
    await asyncio.sleep(0.3)
    await _put(registry, "t", b"2")
    await asyncio.sleep(0.3)
    await registry.delete(ref("t"))
    await asyncio.wait_for(watcher, 5)
    assert seen == [ChangeEvent(ref("t"), 1), ChangeEvent(ref("t"), 2), ChangeEvent(ref("t"), None)]


@pytest.mark.anyio
async def test_file_registry_sees_other_processes_writes(tmp_path: Path) -> None:
    mine, theirs = FileRegistry(tmp_path, poll_interval=0.05), FileRegistry(tmp_path)
    events = mine.events()
    first = asyncio.ensure_future(events.__anext__())
    await asyncio.sleep(0.1)
    await _put(theirs, "t", b"x")
    assert await asyncio.wait_for(first, 2) == ChangeEvent(ref("t"), 1)
    await events.aclose()


@pytest.mark.anyio
async def test_file_registry_watcher_compares_versions_only_after_a_commit(tmp_path: Path) -> None:
    class Counting(FileRegistry):
        scans = 0

        def _current_states(self) -> dict[TaskRef, TaskState]:
            self.scans += 1
            return super()._current_states()

    mine, theirs = Counting(tmp_path, poll_interval=0.01), FileRegistry(tmp_path)
    events = mine.events()
    first = asyncio.ensure_future(events.__anext__())
    await asyncio.sleep(0.3)  # about 30 polls of an unchanged registry
    assert mine.scans == 1, "an idle poll must read the change token only, not every task"
    await _put(theirs, "t", b"x")
    assert await asyncio.wait_for(first, 2) == ChangeEvent(ref("t"), 1)
    assert mine.scans == 2
    await events.aclose()


@pytest.mark.anyio
async def test_file_registry_never_exposes_a_partial_write(tmp_path: Path) -> None:
    reg = FileRegistry(tmp_path)
    await _put(reg, "t", b"good")
    folder = next((tmp_path / "tenants").glob("*/*"))
    (folder / ".current.json.123.tmp").write_text('{"half": ')  # a crash mid-write leaves only a temp file
    (folder / "v00000002.bin").write_bytes(b"orphan of a crashed put")
    current = await reg.current(ref("t"))
    assert current is not None
    assert current.version == 1
    assert await reg.read(ref("t"), 1) == b"good"
    for name in (folder.name, folder.parent.name):
        assert all(c in "0123456789abcdef" for c in name), "names never appear raw in paths"


@pytest.mark.anyio
async def test_redis_down_is_reported_as_unavailable() -> None:
    reg = RedisRegistry("redis://127.0.0.1:1/0")
    with pytest.raises(RegistryUnavailableError, match="Redis registry is unavailable"):
        await reg.ping()
    with pytest.raises(RegistryUnavailableError):
        await _put(reg, "t", b"x")
    await reg.close()


@pytest.mark.anyio
async def test_storage_quota_is_checked_with_the_write(registry: Registry) -> None:
    quota = Quota(max_tasks=3, max_bytes=40)
    sha = "0" * 64
    results = await asyncio.gather(
        *(registry.put(ref(f"t{i}"), b"x" * 10, sha, {}, None, quota) for i in range(8)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, VersionInfo) for r in results) == 3, "concurrent uploads cannot overshoot"
    assert all(isinstance(r, VersionInfo | StorageQuotaError) for r in results)
    assert len(await registry.list("acme")) == 3
    stored = sorted(i.task for i in await registry.list("acme"))
    assert (await registry.put(ref(stored[0]), b"y" * 20, sha, {}, None, quota)).version == 2, (
        "replacing: fine"
    )
    with pytest.raises(
        StorageQuotaError, match=r"to 60 bytes of memories, over its quota of 40 \(max_bytes\)"
    ):
        await registry.put(ref(stored[1]), b"z" * 30, sha, {}, None, quota)
    with pytest.raises(StorageQuotaError, match=r"holds 3 tasks, its quota \(max_tasks\)"):
        await registry.put(ref("one-more"), b"", sha, {}, None, quota)
    assert await registry.current(ref("one-more")) is None
    assert (await registry.put(ref("one-more", "globex"), b"x", sha, {}, None, quota)).version == 1, (
        "per tenant"
    )
    await registry.delete(ref(stored[0]))
    assert (await registry.put(ref("one-more"), b"x" * 10, sha, {}, None, quota)).version == 1


@pytest.mark.anyio
async def test_usage_ledger_sums_replicas_and_hours(registry: Registry) -> None:
    other: Registry  # a second replica on the same storage
    if isinstance(registry, FileRegistry):
        other = FileRegistry(registry.root)
    else:
        assert isinstance(registry, RedisRegistry)
        other = RedisRegistry(REDIS_URL, registry.prefix)
    h = int(time.time() // 3600) - 1
    await registry.add_usage([UsageRecord("acme", "a", h, 2, 5, 50), UsageRecord("acme", "b", h, 1, 1, 7)])
    await other.add_usage([UsageRecord("acme", "a", h, 1, 3, 30), UsageRecord("acme", "a", h + 1, 1, 1, 9)])
    await other.add_usage([UsageRecord("globex", "a", h, 9, 9, 99)])
    assert await registry.usage("acme", h, h + 1) == [
        UsageRecord("acme", "a", h, 3, 8, 80),
        UsageRecord("acme", "b", h, 1, 1, 7),
        UsageRecord("acme", "a", h + 1, 1, 1, 9),
    ]
    assert await registry.usage("acme", h + 1, h + 100) == [UsageRecord("acme", "a", h + 1, 1, 1, 9)]
    assert await registry.usage("initech", 0, h + 100) == []
    await other.close()


@pytest.mark.anyio
async def test_usage_older_than_the_retention_is_dropped(tmp_path: Path) -> None:
    reg = FileRegistry(tmp_path, usage_retention_days=2)
    now = int(time.time() // 3600)
    await reg.add_usage([UsageRecord("acme", "a", now - 72, 1, 1, 1)])
    await reg.add_usage([UsageRecord("acme", "a", now, 1, 2, 3)])
    assert await reg.usage("acme", 0, now) == [UsageRecord("acme", "a", now, 1, 2, 3)]


@pytest.mark.anyio
async def test_a_torn_usage_line_is_never_counted(tmp_path: Path) -> None:
    reg = FileRegistry(tmp_path)
    hour = int(time.time() // 3600)
    await reg.add_usage([UsageRecord("acme", "a", hour, 1, 2, 3)])
    ledger = next((tmp_path / "usage").glob(f"*/{hour}.*.jsonl"))
    with ledger.open("a") as out:
        out.write('{"task": "a", "requests": 1, "ro')  # a crash in the middle of an append
    assert await reg.usage("acme", hour, hour) == [UsageRecord("acme", "a", hour, 1, 2, 3)]


@pytest.mark.anyio
async def test_versions_lists_the_kept_ones_newest_first(registry: Registry) -> None:
    with pytest.raises(TaskNotFoundError, match="not found"):
        await registry.versions(ref("t"))
    for data in (b"one", b"two", b"three"):
        await _put(registry, "t", data)
    kept = await registry.versions(ref("t"))  # keep_versions=2: version 1 is pruned
    assert [(i.version, i.sha256, i.size) for i in kept] == [
        (3, hashlib.sha256(b"three").hexdigest(), 5),
        (2, hashlib.sha256(b"two").hexdigest(), 3),
    ]
    assert kept[0] == await registry.current(ref("t"))
    assert kept[1].metadata == {"labels": ["a", "b"]}
    restored = await registry.put(
        ref("t"), b"two", kept[1].sha256, kept[1].metadata, 3, None, restored_from=2
    )
    assert (restored.version, restored.restored_from) == (4, 2)
    assert [i.version for i in await registry.versions(ref("t"))] == [4, 3]
    await registry.delete(ref("t"))
    with pytest.raises(TaskNotFoundError):
        await registry.versions(ref("t"))


@pytest.mark.anyio
async def test_versions_stored_before_records_are_described_from_their_bytes(
    registry: Registry,
) -> None:
    """A registry written by an earlier release keeps no record per version: the list still
    names each kept version with its sha256 and size."""
    await _put(registry, "t", b"old")
    await _put(registry, "t", b"new")
    if isinstance(registry, FileRegistry):
        for record in registry.root.rglob("v*.json"):
            record.unlink()
    else:
        assert isinstance(registry, RedisRegistry)
        from redis import asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS_URL)
        await client.delete(*[key async for key in client.scan_iter(f"{registry.prefix}:*:vi:*")])
        await client.aclose()
    kept = await registry.versions(ref("t"))
    assert [(i.version, i.sha256, i.size) for i in kept] == [
        (2, hashlib.sha256(b"new").hexdigest(), 3),
        (1, hashlib.sha256(b"old").hexdigest(), 3),
    ]
    assert kept[0] == await registry.current(ref("t")), "the current version's record is current.json"


@pytest.mark.anyio
async def test_a_candidate_is_staged_beside_the_current_version_then_promoted(registry: Registry) -> None:
    sha = hashlib.sha256(b"cand").hexdigest()
    with pytest.raises(TaskNotFoundError, match="not found"):
        await registry.stage(ref("t"), b"cand", sha, {}, "canary", 0.1)
    await _put(registry, "t", b"one")
    with pytest.raises(VersionConflictError):
        await registry.stage(ref("t"), b"cand", sha, {}, "canary", 0.1, if_match=7)
    staged = await registry.stage(ref("t"), b"cand", sha, {"labels": ["x", "y"]}, "canary", 0.25, if_match=1)
    assert (staged.version, staged.state) == (1, (1, 2)), "version 1 stays current, 2 is the candidate"
    assert staged.rollout is not None
    assert (staged.rollout.mode, staged.rollout.share) == ("canary", 0.25)
    assert await registry.current(ref("t")) == staged
    assert await registry.read(ref("t"), 2) == b"cand"
    assert await registry.current_states() == {ref("t"): (1, 2)}
    assert [v.version for v in await registry.versions(ref("t"))] == [2, 1]
    promoted = await registry.end_rollout(ref("t"), promote=True, if_match=1)
    assert (promoted.version, promoted.rollout, promoted.sha256) == (2, None, sha)
    assert promoted.metadata == {"labels": ["x", "y"]}
    assert await registry.current_states() == {ref("t"): (2, 0)}
    with pytest.raises(TaskNotFoundError, match="no candidate"):
        await registry.end_rollout(ref("t"), promote=False)


@pytest.mark.anyio
async def test_an_aborted_candidate_leaves_the_current_version(registry: Registry) -> None:
    await _put(registry, "t", b"one")
    await registry.stage(ref("t"), b"bad", "0" * 64, {}, "shadow", 1.0)
    aborted = await registry.end_rollout(ref("t"), promote=False)
    assert (aborted.version, aborted.rollout) == (1, None)
    assert await registry.read(ref("t"), 1) == b"one"
    assert await registry.current_states() == {ref("t"): (1, 0)}
    with pytest.raises(TaskNotFoundError):
        await registry.read(ref("t"), 2)  # never current: not kept
    staged = await registry.stage(ref("t"), b"again", "0" * 64, {}, "canary", 0.5)
    assert staged.state == (1, 3), "numbers are never reused"
    assert await _put(registry, "t", b"upload") == 4
    current = await registry.current(ref("t"))
    assert current is not None
    assert current.rollout is None, "an upload ends the trial: the candidate was compared with version 1"
    await registry.delete(ref("t"))
    assert await registry.current_states() == {}


@pytest.mark.anyio
async def test_staging_keeps_the_current_version_however_few_are_kept(tmp_path: Path) -> None:
    reg = FileRegistry(tmp_path / "reg", keep_versions=1)
    await _put(reg, "t", b"one")
    await reg.stage(ref("t"), b"cand", "0" * 64, {}, "canary", 0.5)
    assert await reg.read(ref("t"), 1) == b"one", "keep_versions=1 never prunes the current version"
    assert await reg.read(ref("t"), 2) == b"cand"
