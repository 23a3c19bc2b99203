"""The file registry: a directory, the embedded default.

Layout under the root, one folder per tenant and one per task, each named by the hex of its name
(names never appear raw in paths)::

    <root>/tenants/<hex(tenant)>/<hex(task)>/.lock          flock: one writer per task, across processes
    <root>/tenants/<hex(tenant)>/<hex(task)>/counter        last version number ever issued
    <root>/tenants/<hex(tenant)>/<hex(task)>/v00000007.bin  the bytes of version 7 (immutable)
    <root>/tenants/<hex(tenant)>/<hex(task)>/current.json   the current VersionInfo: the commit point
    <root>/usage/<hex(tenant)>/<hour>.<replica>.jsonl        usage lines appended by one replica
    <root>/.changed                                         a fresh token after every commit (watchers)
    <root>/.migrate.lock                                    flock: one migration at a time

A put writes the version file, then replaces ``current.json``; both by temp file, fsync and
rename, so a crash at any moment leaves the previous version current and never exposes a partial
file. Older versions beyond ``keep_versions`` are pruned after the commit.

Events: writes through this object wake :meth:`FileRegistry.events` at once. Other processes
sharing the directory (replicas on one host) are noticed by reading the small ``.changed`` token
every ``poll_interval`` seconds; only when it changed are all tasks' versions compared, so a
fast poll stays cheap with thousands of tasks.

The layout before namespaces kept each task at ``<root>/<hex(task)>/``; :meth:`FileRegistry.migrate`
renames such a folder to ``tenants/<hex(owner)>/<hex(task)>`` (one atomic rename per task).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from memories.atomic import atomic_write
from service.errors import TaskNotFoundError
from service.quotas import Quota
from service.registry.base import (
    ChangeEvent,
    Registry,
    UsageRecord,
    VersionInfo,
    check_if_match,
    check_storage,
    clock_hour,
    limits_storage,
    next_version,
    sum_usage,
)
from service.tasks import TaskRef, name_from_key, storage_key

log = logging.getLogger(__name__)

_CURRENT = "current.json"
_CHANGED = ".changed"
_TENANTS = "tenants"


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_current(folder: Path) -> VersionInfo | None:
    try:
        return VersionInfo.from_json((folder / _CURRENT).read_text())
    except FileNotFoundError:
        return None


def _version_file(folder: Path, version: int) -> Path:
    return folder / f"v{version:08d}.bin"


def _is_hex_name(name: str) -> bool:
    try:
        name_from_key(name)
    except ValueError:
        return False
    return True


class FileRegistry(Registry):
    def __init__(
        self, root: Path, keep_versions: int = 3, poll_interval: float = 0.05, usage_retention_days: int = 400
    ) -> None:
        self.root = root
        self.keep_versions = keep_versions
        self.usage_retention_days = usage_retention_days
        self.poll_interval = poll_interval
        self._changed = asyncio.Event()
        self._closed = False
        self._replica = secrets.token_hex(6)  # names this process's usage files
        (root / _TENANTS).mkdir(parents=True, exist_ok=True)

    def _tenant_dir(self, tenant: str) -> Path:
        return self.root / _TENANTS / storage_key(tenant)

    def _dir(self, ref: TaskRef) -> Path:
        return self._tenant_dir(ref.tenant) / storage_key(ref.task)

    @contextmanager
    def _locked(self, ref: TaskRef) -> Iterator[Path]:
        folder = self._dir(ref)
        folder.mkdir(parents=True, exist_ok=True)
        with _flock(folder / ".lock"):
            yield folder

    def _put(
        self,
        ref: TaskRef,
        data: bytes,
        sha256: str,
        metadata: dict[str, Any],
        if_match: int | None,
        quota: Quota | None,
    ) -> VersionInfo:
        if not limits_storage(quota):
            return self._put_task(ref, data, sha256, metadata, if_match)
        tenant = self._tenant_dir(ref.tenant)
        tenant.mkdir(parents=True, exist_ok=True)
        with _flock(tenant / ".lock"):  # every write of the tenant waits: the usage cannot change meanwhile
            check_storage(ref, self._list(ref.tenant, None, None), len(data), quota)
            return self._put_task(ref, data, sha256, metadata, if_match)

    def _put_task(
        self, ref: TaskRef, data: bytes, sha256: str, metadata: dict[str, Any], if_match: int | None
    ) -> VersionInfo:
        with self._locked(ref) as folder:
            current = _read_current(folder)
            counter = folder / "counter"
            issued = int(counter.read_text()) if counter.exists() else 0
            info = next_version(ref, current, issued, data, sha256, metadata, if_match)
            atomic_write(counter, str(info.version).encode())
            atomic_write(_version_file(folder, info.version), data)
            atomic_write(folder / _CURRENT, info.to_json().encode())
            self._announce()
            for old in sorted(folder.glob("v*.bin"))[: -self.keep_versions]:
                old.unlink(missing_ok=True)
        return info

    def _announce(self) -> None:
        """Tell watchers in other processes that a commit happened (after the commit point)."""
        atomic_write(self.root / _CHANGED, secrets.token_hex(8).encode())

    def _change_token(self) -> bytes:
        try:
            return (self.root / _CHANGED).read_bytes()
        except FileNotFoundError:
            return b""

    async def put(
        self,
        ref: TaskRef,
        data: bytes,
        sha256: str,
        metadata: dict[str, Any],
        if_match: int | None = None,
        quota: Quota | None = None,
    ) -> VersionInfo:
        info = await asyncio.to_thread(self._put, ref, data, sha256, metadata, if_match, quota)
        self._changed.set()
        return info

    async def current(self, ref: TaskRef) -> VersionInfo | None:
        return await asyncio.to_thread(_read_current, self._dir(ref))

    def _read(self, ref: TaskRef, version: int) -> bytes:
        try:
            return _version_file(self._dir(ref), version).read_bytes()
        except FileNotFoundError:
            raise TaskNotFoundError(f"task {ref.task!r} has no version {version}") from None

    async def read(self, ref: TaskRef, version: int) -> bytes:
        return await asyncio.to_thread(self._read, ref, version)

    def _list(self, tenant: str, after: str | None, limit: int | None) -> list[VersionInfo]:
        folder = self._tenant_dir(tenant)
        if not folder.is_dir():
            return []
        tasks = sorted(name_from_key(p.name) for p in folder.iterdir() if (p / _CURRENT).exists())
        out = []
        for task in tasks:
            if after is not None and task <= after:
                continue
            info = _read_current(self._dir(TaskRef(tenant, task)))
            if info is not None:
                out.append(info)
            if len(out) == limit:
                break
        return out

    async def list(self, tenant: str, after: str | None = None, limit: int = 100) -> list[VersionInfo]:
        return await asyncio.to_thread(self._list, tenant, after, limit)

    def _delete(self, ref: TaskRef, if_match: int | None) -> None:
        with self._locked(ref) as folder:
            current = _read_current(folder)
            if current is None:
                raise TaskNotFoundError(f"task {ref.task!r} not found")
            check_if_match(ref, current, if_match)
            (folder / _CURRENT).unlink()
            self._announce()
            for old in folder.glob("v*.bin"):
                old.unlink(missing_ok=True)

    async def delete(self, ref: TaskRef, if_match: int | None = None) -> None:
        await asyncio.to_thread(self._delete, ref, if_match)
        self._changed.set()

    def _current_versions(self) -> dict[TaskRef, int]:
        versions = {}
        for tenant in (self.root / _TENANTS).iterdir():
            for folder in tenant.iterdir() if tenant.is_dir() else ():
                info = _read_current(folder) if folder.is_dir() else None
                if info is not None:
                    versions[info.ref] = info.version
        return versions

    async def current_versions(self) -> dict[TaskRef, int]:
        return await asyncio.to_thread(self._current_versions)

    def _migrate(self) -> int:
        moved = 0
        with _flock(self.root / ".migrate.lock"):
            for folder in sorted(self.root.iterdir()):
                if folder.name == _TENANTS or not folder.is_dir() or not _is_hex_name(folder.name):
                    continue
                with _flock(folder / ".lock"):
                    info = _read_current(folder)
                    target = self._dir(info.ref) if info is not None else None
                    if target is not None and target.exists():
                        log.error(
                            "not migrating %s: %s already exists in its namespace; the old folder is kept",
                            folder,
                            target,
                        )
                    elif target is not None:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        folder.rename(target)  # atomic: the task is in the old place or the new one
                        moved += 1
                if info is None:  # a deleted task: only its counter and lock are left
                    shutil.rmtree(folder)
            if moved:
                self._announce()
        return moved

    async def migrate(self) -> int:
        moved = await asyncio.to_thread(self._migrate)
        if moved:
            log.info("moved %d tasks of the pre-namespace layout into their owners' namespaces", moved)
            self._changed.set()
        return moved

    def _usage_dir(self, tenant: str) -> Path:
        return self.root / "usage" / storage_key(tenant)

    def _add_usage(self, records: Sequence[UsageRecord]) -> None:
        oldest = clock_hour() - 24 * self.usage_retention_days
        for tenant in {record.tenant for record in records}:  # the retention: drop expired hours
            for path in self._usage_dir(tenant).glob("*.jsonl"):
                if int(path.name.split(".", 1)[0]) < oldest:
                    path.unlink(missing_ok=True)
        for record in records:
            folder = self._usage_dir(record.tenant)
            folder.mkdir(parents=True, exist_ok=True)
            line = json.dumps(
                {
                    "task": record.task,
                    "requests": record.requests,
                    "rows": record.rows,
                    "tokens": record.tokens,
                }
            )
            # one file per replica and hour, appended with O_APPEND: no other writer, no lock
            fd = os.open(
                folder / f"{record.hour}.{self._replica}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND
            )
            try:
                os.write(fd, line.encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)

    async def add_usage(self, records: Sequence[UsageRecord]) -> None:
        await asyncio.to_thread(self._add_usage, records)

    def _usage(self, tenant: str, first_hour: int, last_hour: int) -> builtins.list[UsageRecord]:
        folder = self._usage_dir(tenant)
        records = []
        for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else ():
            hour = int(path.name.split(".", 1)[0])
            if not first_hour <= hour <= last_hour:
                continue
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:  # the torn last line of a crash mid-append: never counted
                    continue
                records.append(
                    UsageRecord(
                        tenant, entry["task"], hour, entry["requests"], entry["rows"], entry["tokens"]
                    )
                )
        return sum_usage(records)

    async def usage(self, tenant: str, first_hour: int, last_hour: int) -> builtins.list[UsageRecord]:
        return await asyncio.to_thread(self._usage, tenant, first_hour, last_hour)

    async def events(self) -> AsyncIterator[ChangeEvent]:
        token = await asyncio.to_thread(self._change_token)
        known = await self.current_versions()
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.poll_interval)
            woken = self._changed.is_set()
            self._changed.clear()
            seen, token = token, await asyncio.to_thread(self._change_token)
            if not woken and token == seen:
                continue
            now = await self.current_versions()
            for ref, version in sorted(now.items()):
                if known.get(ref) != version:
                    yield ChangeEvent(ref, version)
            for ref in sorted(set(known) - set(now)):
                yield ChangeEvent(ref, None)
            known = now

    async def ping(self) -> None:
        await asyncio.to_thread(self.root.stat)

    async def close(self) -> None:
        self._closed = True
        self._changed.set()
