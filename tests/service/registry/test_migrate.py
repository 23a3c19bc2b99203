"""Registries written before namespaces (tests/fixtures/registry-v1) move into their owners' namespaces.

The fixture was written by the registry code of the last commit with one global namespace; each
test works on a copy of it (a directory, or its keys loaded into the real Redis under a fresh
prefix) and checks that every version it held is served from the owner's namespace afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from redis import asyncio as aioredis

from service.registry.base import Registry
from service.registry.files import FileRegistry
from service.registry.redis import RedisRegistry
from service.tasks import TaskRef
from spartan_cli.main import main

FIXTURE = Path(__file__).parents[2] / "fixtures" / "registry-v1"
REDIS_URL = "redis://127.0.0.1:6379/0"

# (tenant, task) -> the versions the old registry held, current last
HELD = {
    TaskRef("acme", "sentiment"): [2, 3, 4],
    TaskRef("globex", "news"): [1],
    TaskRef("local", "demo"): [1],
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def copy_file_fixture(target: Path, times: int = 1) -> Path:
    """The old file registry, its tasks repeated ``times`` times (ids suffixed -1, -2, ...)."""
    for i in range(times):
        for folder in (FIXTURE / "files").iterdir():
            task = bytes.fromhex(folder.name).decode()
            name = task if times == 1 else f"{task}-{i}"
            dest = target / name.encode().hex()
            shutil.copytree(folder, dest)
            current = dest / "current.json"
            if current.exists() and times > 1:
                info = json.loads(current.read_text())
                current.write_text(json.dumps({**info, "task": name}))
    return target


async def load_redis_fixture(prefix: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    for key, value in json.loads((FIXTURE / "redis.json").read_text()).items():
        name = prefix + key.removeprefix("legacyfix")
        if "string" in value:
            await client.set(name, base64.b64decode(value["string"]))
        else:
            await client.zadd(name, {member: 0 for member in value["zset"]})
    await client.aclose()


async def redis_keys(prefix: str) -> list[str]:
    client = aioredis.Redis.from_url(REDIS_URL)
    keys = sorted([key.decode() async for key in client.scan_iter(f"{prefix}:*")])
    if keys:
        await client.delete(*keys)
    await client.aclose()
    return keys


@pytest.fixture(params=["file", "redis"])
async def old_registry(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Registry]:
    if request.param == "file":
        reg: Registry = FileRegistry(copy_file_fixture(tmp_path / "reg"), keep_versions=3)
        yield reg
        await reg.close()
    else:
        prefix = f"test-{uuid.uuid4().hex[:12]}"
        await load_redis_fixture(prefix)
        reg = RedisRegistry(REDIS_URL, prefix, keep_versions=3)
        yield reg
        await reg.close()
        await redis_keys(prefix)


async def assert_everything_held(reg: Registry) -> None:
    for ref, versions in HELD.items():
        current = await reg.current(ref)
        assert current is not None, f"{ref} lost"
        assert (current.task, current.owner, current.version) == (ref.task, ref.tenant, versions[-1])
        assert current.metadata == {"labels": ["neg", "pos"], "note": ref.task}
        for version in versions:
            data = await reg.read(ref, version)
            assert data == f"{ref.tenant} {ref.task} v{version}".encode()
        assert current.sha256 == hashlib.sha256(data).hexdigest()
    assert await current_versions(reg) == {ref: versions[-1] for ref, versions in HELD.items()}


@pytest.mark.anyio
async def test_old_registry_moves_into_owners_namespaces(old_registry: Registry) -> None:
    assert await current_versions(old_registry) == {}, "the old layout is invisible before migrating"
    assert await old_registry.migrate() == 3
    await assert_everything_held(old_registry)
    assert [i.task for i in await old_registry.list("acme")] == ["sentiment"]
    assert await old_registry.current(TaskRef("acme", "gone")) is None
    assert await old_registry.migrate() == 0, "a second run has nothing left to do"
    await assert_everything_held(old_registry)
    info = await old_registry.put(TaskRef("acme", "sentiment"), b"new", "0" * 64, {})
    assert info.version == 5, "version numbers continue after the move"


@pytest.mark.anyio
async def test_migrated_redis_registry_keeps_no_old_keys() -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    await load_redis_fixture(prefix)
    reg = RedisRegistry(REDIS_URL, prefix, keep_versions=3)
    await reg.migrate()
    await reg.close()
    keys = await redis_keys(prefix)
    assert [k for k in keys if k.startswith(f"{prefix}:task")] == []
    assert f"{prefix}:index" in keys


# Runs a migration in a child process that kills itself (SIGKILL) right after its N-th move of a
# task (N = argv[3]; 0: never), at the point a crash would hurt most: inside the migration loop.
KILLED_MIGRATION = """
import asyncio, os, pathlib, signal, sys
from service.registry.files import FileRegistry
from service.registry.redis import RedisRegistry

limit, moves = int(sys.argv[3]), 0

def counted(original):
    def wrapper(*args, **kwargs):
        global moves
        result = original(*args, **kwargs)
        moves += 1
        if moves == limit:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapper

pathlib.Path.rename = counted(pathlib.Path.rename)
if sys.argv[1] == "file":
    asyncio.run(FileRegistry(pathlib.Path(sys.argv[2])).migrate())
else:
    async def main():
        reg = RedisRegistry("redis://127.0.0.1:6379/0", sys.argv[2])
        original = reg._migrate_task
        async def task(*args):
            done = await original(*args)
            counted(lambda: None)()
            return done
        reg._migrate_task = task
        await reg.migrate()
    asyncio.run(main())
"""


def run_migration(kind: str, where: str, kill_after: int) -> int:
    return subprocess.run(
        [sys.executable, "-c", KILLED_MIGRATION, kind, where, str(kill_after)], timeout=120
    ).returncode


async def current_versions(reg: Registry) -> dict[TaskRef, int]:
    return {ref: state.version for ref, state in (await reg.current_states()).items()}


def assert_copies_held(versions: dict[TaskRef, int], read: Callable[[TaskRef, int], bytes]) -> None:
    """Every copy of the fixture's live tasks, at its current version, with its bytes."""
    expected = {TaskRef(r.tenant, f"{r.task}-{i}"): v[-1] for r, v in HELD.items() for i in range(COPIES)}
    assert versions == expected
    for ref, version in versions.items():
        assert read(ref, version) == f"{ref.tenant} {ref.task.rsplit('-', 1)[0]} v{version}".encode()


COPIES = 40


def test_file_migration_killed_midway_is_completed_by_a_rerun(tmp_path: Path) -> None:
    root = copy_file_fixture(tmp_path / "reg", times=COPIES)
    for kill_after in (1, 7, 30):
        assert run_migration("file", str(root), kill_after) == -signal.SIGKILL
    left = [p for p in root.iterdir() if p.is_dir() and p.name != "tenants"]
    assert len(left) > COPIES, "the kills left tasks to move"
    assert run_migration("file", str(root), 0) == 0
    assert [p for p in root.iterdir() if p.is_dir() and p.name != "tenants"] == []
    reg = FileRegistry(root)
    assert_copies_held({ref: state.version for ref, state in reg._current_states().items()}, reg._read)


@pytest.mark.anyio
async def test_redis_migration_killed_midway_is_completed_by_a_rerun() -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    client = aioredis.Redis.from_url(REDIS_URL)
    for i in range(COPIES):  # the fixture's tasks, each copied under COPIES names
        sub = f"{prefix}-copy{i}"
        await load_redis_fixture(sub)
        async for key in client.scan_iter(f"{sub}:task:*"):
            parts = key.decode().split(":")
            name = f"{bytes.fromhex(parts[2]).decode()}-{i}"
            value = await client.get(key)
            if parts[3] == "current":
                value = json.dumps({**json.loads(value), "task": name}).encode()
            await client.set(":".join([prefix, "task", name.encode().hex(), *parts[3:]]), value)
        await redis_keys(sub)
    await client.aclose()
    for kill_after in (1, 7, 30):
        assert await asyncio.to_thread(run_migration, "redis", prefix, kill_after) == -signal.SIGKILL
    assert await asyncio.to_thread(run_migration, "redis", prefix, 0) == 0
    reg = RedisRegistry(REDIS_URL, prefix)
    blobs = {}
    versions = await current_versions(reg)
    for ref, version in versions.items():
        blobs[ref, version] = await reg.read(ref, version)
    await reg.close()
    keys = await redis_keys(prefix)
    assert [k for k in keys if k.startswith(f"{prefix}:task:")] == []
    assert_copies_held(versions, lambda ref, version: blobs[ref, version])


def test_spartan_registry_migrate_moves_an_old_file_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_file_fixture(tmp_path / "reg")
    assert main(["registry", "migrate", "--registry-dir", str(root)]) == 0
    assert "moved 3 tasks" in capsys.readouterr().err
    assert main(["registry", "migrate", "--registry-dir", str(root)]) == 0
    assert "nothing to migrate" in capsys.readouterr().err
    reg = FileRegistry(root)
    assert {ref: state.version for ref, state in reg._current_states().items()} == {
        ref: versions[-1] for ref, versions in HELD.items()
    }
