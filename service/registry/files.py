"""The file registry: a directory, the embedded default.

Layout under the root, one folder per tenant and one per task, each named by the hex of its name
(names never appear raw in paths)::

    <root>/tenants/<hex(tenant)>/<hex(task)>/.lock          flock: one writer per task, across processes
    <root>/tenants/<hex(tenant)>/<hex(task)>/counter        last version number ever issued
    <root>/tenants/<hex(tenant)>/<hex(task)>/v00000007.bin  the bytes of version 7 (immutable)
    <root>/tenants/<hex(tenant)>/<hex(task)>/v00000007.json its VersionInfo (for the version list)
    <root>/tenants/<hex(tenant)>/<hex(task)>/current.json   the current VersionInfo: the commit point
    <root>/usage/<hex(tenant)>/<hour>.<replica>.jsonl        usage lines appended by one replica
    <root>/.changed                                         a fresh token after every commit (watchers)
    <root>/.migrate.lock                                    flock: one migration at a time

A put writes the version file and its record, then replaces ``current.json``; each by temp file, fsync and
rename, so a crash at any moment leaves the previous version current and never exposes a partial
file. Older versions beyond ``keep_versions`` are pruned after the commit.

Storage faults get the registry's errors, and the write they hit leaves nothing behind (no temp
file, no version file that is not committed): no space left (ENOSPC, EDQUOT) is
:class:`~service.errors.RegistryFullError` (507); a read-only filesystem, a permission error or a
registry directory that is gone (deleted, unmounted) is
:class:`~service.errors.RegistryUnavailableError` (503). A gone directory is never created again
by a write: that would start an empty registry in its place. :meth:`FileRegistry.degraded` tells
readiness about a full disk.

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
import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from memories.atomic import atomic_write
from service.errors import RegistryFullError, RegistryUnavailableError, TaskNotFoundError
from service.quotas import Quota
from service.registry.base import (
    ChangeEvent,
    Registry,
    Rollout,
    RolloutMode,
    TaskState,
    UsageRecord,
    VersionInfo,
    check_if_match,
    check_storage,
    clock_hour,
    described,
    limits_storage,
    next_version,
    prunable,
    sum_usage,
)
from service.tasks import TaskRef, name_from_key, storage_key

log = logging.getLogger(__name__)

_CURRENT = "current.json"
_CHANGED = ".changed"
_TENANTS = "tenants"
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_GONE = "the registry directory is gone (deleted or unmounted)"
_READ_ONLY = "the registry is on a read-only filesystem"
LOW_SPACE_BYTES = 64 << 10
"""Readiness calls the registry full below this much free space, or while the last write found it
full (until a write succeeds)."""


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


def _current_or_missing(ref: TaskRef, folder: Path) -> VersionInfo:
    current = _read_current(folder)
    if current is None:
        raise TaskNotFoundError(f"task {ref.task!r} not found")
    return current


def _version_file(folder: Path, version: int) -> Path:
    return folder / f"v{version:08d}.bin"


def _record_file(version_file: Path) -> Path:
    return version_file.with_suffix(".json")


def _remove_version(version_file: Path) -> None:
    version_file.unlink(missing_ok=True)
    _record_file(version_file).unlink(missing_ok=True)


def _is_hex_name(name: str) -> bool:
    try:
        name_from_key(name)
    except ValueError:
        return False
    return True


class _Faults:
    """Turns the OSErrors of the registry's storage into the registry's errors."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.full: str | None = None  # why the last write failed for lack of space; None once one succeeds

    def gone(self) -> bool:
        return not (self.root / _TENANTS).is_dir()

    def error(self, exc: OSError, doing: str) -> Exception:
        """The registry error for ``exc`` raised while ``doing`` (e.g. "the upload"); ``exc`` itself
        when it is no storage fault."""
        if exc.errno in _FULL:
            self.full = exc.strerror or "no space left"
            return RegistryFullError(
                f"the registry is full ({self.full}): {doing} stored nothing; an operator must free "
                "space or enlarge the registry's volume, then retry"
            )
        if exc.errno == errno.EROFS:
            return RegistryUnavailableError(f"{_READ_ONLY}: {doing} stored nothing")
        if self.gone():
            return RegistryUnavailableError(f"{_GONE}: {doing} stored nothing")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return RegistryUnavailableError(
                f"the registry directory cannot be written ({exc.strerror}): {doing} stored nothing"
            )
        return exc

    @contextmanager
    def writing(self, doing: str) -> Iterator[None]:
        """Around a write: its storage faults as registry errors (see :meth:`error`)."""
        if self.gone():
            raise RegistryUnavailableError(f"{_GONE}: {doing} stored nothing")
        try:
            yield
        except OSError as exc:
            raise self.error(exc, doing) from None
        self.full = None

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Around a read of many tasks: a gone directory as RegistryUnavailableError."""
        try:
            yield
        except OSError:
            if self.gone():
                raise RegistryUnavailableError(_GONE) from None
            raise


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
        self._faults = _Faults(root)

    def _tenant_dir(self, tenant: str) -> Path:
        return self.root / _TENANTS / storage_key(tenant)

    def _dir(self, ref: TaskRef) -> Path:
        return self._tenant_dir(ref.tenant) / storage_key(ref.task)

    @contextmanager
    def _locked(self, ref: TaskRef) -> Iterator[Path]:
        folder = self._dir(ref)
        folder.parent.mkdir(exist_ok=True)  # not parents: a gone registry is not created again
        folder.mkdir(exist_ok=True)
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
        restored_from: int | None,
    ) -> VersionInfo:
        def write() -> VersionInfo:
            return self._put_task(ref, data, sha256, metadata, if_match, restored_from)

        return self._within_quota(ref, len(data), quota, "the upload", write)

    def _within_quota(
        self, ref: TaskRef, size: int, quota: Quota | None, doing: str, write: Callable[[], VersionInfo]
    ) -> VersionInfo:
        """Run ``write`` (storing ``size`` bytes for ``ref``) with the storage faults mapped and,
        when the tenant has storage limits, under its lock after checking them."""
        with self._faults.writing(doing):
            if not limits_storage(quota):
                return write()
            tenant = self._tenant_dir(ref.tenant)
            tenant.mkdir(exist_ok=True)
            with _flock(tenant / ".lock"):  # every write of the tenant waits: the usage cannot change
                check_storage(ref, self._list(ref.tenant, None, None), size, quota)
                return write()

    def _put_task(
        self,
        ref: TaskRef,
        data: bytes,
        sha256: str,
        metadata: dict[str, Any],
        if_match: int | None,
        restored_from: int | None,
    ) -> VersionInfo:
        with self._locked(ref) as folder:
            current = _read_current(folder)
            counter = folder / "counter"
            issued = int(counter.read_text()) if counter.exists() else 0
            info = next_version(ref, current, issued, data, sha256, metadata, if_match, restored_from)
            atomic_write(counter, str(info.version).encode())  # a number issued is never reused
            version_file = _version_file(folder, info.version)
            try:
                atomic_write(version_file, data)
                atomic_write(_record_file(version_file), info.to_json().encode())
                atomic_write(folder / _CURRENT, info.to_json().encode())
            except BaseException:
                _remove_version(version_file)  # not committed: nothing may point at it
                raise
            self._announce()
            self._prune(folder, info)
        return info

    def _prune(self, folder: Path, current: VersionInfo) -> None:
        stored = [int(path.stem[1:]) for path in folder.glob("v*.bin")]
        for version in prunable(stored, self.keep_versions, current):
            _remove_version(_version_file(folder, version))

    def _stage(
        self,
        ref: TaskRef,
        data: bytes,
        sha256: str,
        metadata: dict[str, Any],
        rollout: tuple[RolloutMode, float],
        if_match: int | None,
        quota: Quota | None,
    ) -> VersionInfo:
        def write() -> VersionInfo:
            return self._stage_task(ref, data, sha256, metadata, rollout, if_match)

        return self._within_quota(ref, len(data), quota, "the candidate upload", write)

    def _stage_task(
        self,
        ref: TaskRef,
        data: bytes,
        sha256: str,
        metadata: dict[str, Any],
        rollout: tuple[RolloutMode, float],
        if_match: int | None,
    ) -> VersionInfo:
        with self._locked(ref) as folder:
            current = _current_or_missing(ref, folder)
            counter = folder / "counter"
            candidate = next_version(ref, current, int(counter.read_text()), data, sha256, metadata, if_match)
            atomic_write(counter, str(candidate.version).encode())
            version_file = _version_file(folder, candidate.version)
            mode, share = rollout
            staged = replace(current, rollout=Rollout(candidate.version, mode, share, candidate.created_at))
            try:
                atomic_write(version_file, data)
                atomic_write(_record_file(version_file), candidate.to_json().encode())
                atomic_write(folder / _CURRENT, staged.to_json().encode())
            except BaseException:
                _remove_version(version_file)
                raise
            self._announce()
            self._prune(folder, staged)
        return staged

    def _end_rollout(self, ref: TaskRef, promote: bool, if_match: int | None) -> VersionInfo:
        with self._faults.writing("the promotion" if promote else "the abort"), self._locked(ref) as folder:
            current = _current_or_missing(ref, folder)
            check_if_match(ref, current, if_match)
            if current.rollout is None:
                raise TaskNotFoundError(f"task {ref.task!r} has no candidate on trial")
            candidate = _version_file(folder, current.rollout.version)
            ended = VersionInfo.from_json(_record_file(candidate).read_bytes()) if promote else None
            atomic_write(folder / _CURRENT, (ended or replace(current, rollout=None)).to_json().encode())
            if ended is None:
                _remove_version(candidate)  # never current: an aborted candidate is not kept
            self._announce()
        return ended or replace(current, rollout=None)

    async def stage(
        self,
        ref: TaskRef,
        data: bytes,
        sha256: str,
        metadata: dict[str, Any],
        mode: RolloutMode,
        share: float,
        if_match: int | None = None,
        quota: Quota | None = None,
    ) -> VersionInfo:
        staged = await asyncio.to_thread(
            self._stage, ref, data, sha256, metadata, (mode, share), if_match, quota
        )
        self._changed.set()
        return staged

    async def end_rollout(self, ref: TaskRef, promote: bool, if_match: int | None = None) -> VersionInfo:
        ended = await asyncio.to_thread(self._end_rollout, ref, promote, if_match)
        self._changed.set()
        return ended

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
        restored_from: int | None = None,
    ) -> VersionInfo:
        info = await asyncio.to_thread(self._put, ref, data, sha256, metadata, if_match, quota, restored_from)
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

    def _versions(self, ref: TaskRef) -> builtins.list[VersionInfo]:
        folder = self._dir(ref)
        with self._faults.reading():
            current = _read_current(folder)
            if current is None:
                raise TaskNotFoundError(f"task {ref.task!r} not found")
            kept = []
            for version_file in sorted(folder.glob("v*.bin"), reverse=True):
                record, version = _record_file(version_file), int(version_file.stem[1:])
                if version > current.version and version != current.state.candidate:
                    continue  # a crash between its write and the commit
                with contextlib.suppress(FileNotFoundError):  # pruned meanwhile: not kept any more
                    if record.exists():
                        kept.append(VersionInfo.from_json(record.read_bytes()))
                    elif version == current.version:
                        kept.append(current)
                    else:
                        stored_at = version_file.stat().st_mtime
                        kept.append(described(ref, version, version_file.read_bytes(), stored_at))
            return kept

    async def versions(self, ref: TaskRef) -> builtins.list[VersionInfo]:
        return await asyncio.to_thread(self._versions, ref)

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
        with self._faults.writing("the delete"), self._locked(ref) as folder:
            current = _read_current(folder)
            if current is None:
                raise TaskNotFoundError(f"task {ref.task!r} not found")
            check_if_match(ref, current, if_match)
            (folder / _CURRENT).unlink()
            for old in folder.glob("v*.bin"):  # first: on a full disk the announcement needs the space
                _remove_version(old)
            self._announce()

    async def delete(self, ref: TaskRef, if_match: int | None = None) -> None:
        await asyncio.to_thread(self._delete, ref, if_match)
        self._changed.set()

    def _current_states(self) -> dict[TaskRef, TaskState]:
        states = {}
        with self._faults.reading():
            for tenant in (self.root / _TENANTS).iterdir():
                for folder in tenant.iterdir() if tenant.is_dir() else ():
                    info = _read_current(folder) if folder.is_dir() else None
                    if info is not None:
                        states[info.ref] = info.state
        return states

    async def current_states(self) -> dict[TaskRef, TaskState]:
        return await asyncio.to_thread(self._current_states)

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
        with self._faults.writing("the usage flush"):
            self._append_usage(records)

    def _append_usage(self, records: Sequence[UsageRecord]) -> None:
        oldest = clock_hour() - 24 * self.usage_retention_days
        for tenant in {record.tenant for record in records}:  # the retention: drop expired hours
            for path in self._usage_dir(tenant).glob("*.jsonl"):
                if int(path.name.split(".", 1)[0]) < oldest:
                    path.unlink(missing_ok=True)
        for record in records:
            folder = self._usage_dir(record.tenant)
            folder.parent.mkdir(exist_ok=True)
            folder.mkdir(exist_ok=True)
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
        known = await self.current_states()
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.poll_interval)
            woken = self._changed.is_set()
            self._changed.clear()
            seen, token = token, await asyncio.to_thread(self._change_token)
            if not woken and token == seen:
                continue
            now = await self.current_states()
            for ref, state in sorted(now.items()):
                if known.get(ref) != state:
                    yield ChangeEvent(ref, state.version, state.candidate)
            for ref in sorted(set(known) - set(now)):
                yield ChangeEvent(ref, None)
            known = now

    def _ping(self) -> None:
        if self._faults.gone():
            raise RegistryUnavailableError(_GONE)
        if os.statvfs(self.root).f_flag & os.ST_RDONLY:  # status() adds what still works
            raise RegistryUnavailableError(_READ_ONLY)

    async def ping(self) -> None:
        await asyncio.to_thread(self._ping)

    def _degraded(self) -> builtins.list[str]:
        with contextlib.suppress(OSError):
            stat = os.statvfs(self.root)
            free = stat.f_bavail * stat.f_frsize
            if self._faults.full is not None or free < LOW_SPACE_BYTES:
                return [
                    f"the registry is full ({free >> 10} KiB free): uploads answer 507; "
                    "stored tasks still classify"
                ]
        return []

    async def degraded(self) -> builtins.list[str]:
        return await asyncio.to_thread(self._degraded)

    async def close(self) -> None:
        self._closed = True
        self._changed.set()
