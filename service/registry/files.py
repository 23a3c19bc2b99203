"""The file registry: a directory, the embedded default.

Layout under the root, one folder per task named by the hex of its id (task ids never appear raw
in paths)::

    <root>/<hex(task)>/.lock            flock: one writer per task, across processes
    <root>/<hex(task)>/counter          last version number ever issued (survives deletes)
    <root>/<hex(task)>/v00000007.bin    the bytes of version 7 (immutable)
    <root>/<hex(task)>/current.json     VersionInfo of the current version: the commit point
    <root>/.changed                     a fresh random token after every commit (for watchers)

A put writes the version file, then replaces ``current.json``; both by temp file, fsync and
rename, so a crash at any moment leaves the previous version current and never exposes a partial
file. Older versions beyond ``keep_versions`` are pruned after the commit.

Events: writes through this object wake :meth:`FileRegistry.events` at once. Other processes
sharing the directory (replicas on one host) are noticed by reading the small ``.changed`` token
every ``poll_interval`` seconds; only when it changed are all tasks' versions compared, so a
fast poll stays cheap with thousands of tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from memories.atomic import atomic_write
from service.errors import TaskNotFoundError
from service.registry.base import ChangeEvent, Registry, VersionInfo, check_if_match, next_version
from service.tasks import storage_key, task_from_key

_CURRENT = "current.json"
_CHANGED = ".changed"


class FileRegistry(Registry):
    def __init__(self, root: Path, keep_versions: int = 3, poll_interval: float = 0.05) -> None:
        self.root = root
        self.keep_versions = keep_versions
        self.poll_interval = poll_interval
        self._changed = asyncio.Event()
        self._closed = False
        root.mkdir(parents=True, exist_ok=True)

    def _dir(self, task: str) -> Path:
        return self.root / storage_key(task)

    @staticmethod
    def _version_file(folder: Path, version: int) -> Path:
        return folder / f"v{version:08d}.bin"

    @contextmanager
    def _locked(self, task: str) -> Iterator[Path]:
        folder = self._dir(task)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield folder
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _read_current(folder: Path) -> VersionInfo | None:
        try:
            return VersionInfo.from_json((folder / _CURRENT).read_text())
        except FileNotFoundError:
            return None

    def _put(
        self,
        task: str,
        data: bytes,
        sha256: str,
        metadata: dict[str, Any],
        owner: str,
        if_match: int | None,
        any_owner: bool,
    ) -> VersionInfo:
        with self._locked(task) as folder:
            current = self._read_current(folder)
            counter = folder / "counter"
            issued = int(counter.read_text()) if counter.exists() else 0
            info = next_version(task, current, issued, data, sha256, metadata, owner, if_match, any_owner)
            atomic_write(counter, str(info.version).encode())
            atomic_write(self._version_file(folder, info.version), data)
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
        task: str,
        data: bytes,
        sha256: str,
        metadata: dict[str, Any],
        owner: str,
        if_match: int | None = None,
        any_owner: bool = False,
    ) -> VersionInfo:
        info = await asyncio.to_thread(self._put, task, data, sha256, metadata, owner, if_match, any_owner)
        self._changed.set()
        return info

    async def current(self, task: str) -> VersionInfo | None:
        return await asyncio.to_thread(self._read_current, self._dir(task))

    def _read(self, task: str, version: int) -> bytes:
        try:
            return self._version_file(self._dir(task), version).read_bytes()
        except FileNotFoundError:
            raise TaskNotFoundError(f"task {task!r} has no version {version}") from None

    async def read(self, task: str, version: int) -> bytes:
        return await asyncio.to_thread(self._read, task, version)

    def _list(self, after: str | None, limit: int) -> list[VersionInfo]:
        tasks = sorted(task_from_key(p.name) for p in self.root.iterdir() if (p / _CURRENT).exists())
        out = []
        for task in tasks:
            if after is not None and task <= after:
                continue
            info = self._read_current(self._dir(task))
            if info is not None:
                out.append(info)
            if len(out) == limit:
                break
        return out

    async def list(self, after: str | None = None, limit: int = 100) -> list[VersionInfo]:
        return await asyncio.to_thread(self._list, after, limit)

    def _delete(self, task: str, if_match: int | None) -> None:
        with self._locked(task) as folder:
            current = self._read_current(folder)
            if current is None:
                raise TaskNotFoundError(f"task {task!r} not found")
            check_if_match(task, current, if_match)
            (folder / _CURRENT).unlink()
            self._announce()
            for old in folder.glob("v*.bin"):
                old.unlink(missing_ok=True)

    async def delete(self, task: str, if_match: int | None = None) -> None:
        await asyncio.to_thread(self._delete, task, if_match)
        self._changed.set()

    def _current_versions(self) -> dict[str, int]:
        versions = {}
        for folder in self.root.iterdir():
            info = self._read_current(folder) if folder.is_dir() else None
            if info is not None:
                versions[info.task] = info.version
        return versions

    async def current_versions(self) -> dict[str, int]:
        return await asyncio.to_thread(self._current_versions)

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
            for task, version in sorted(now.items()):
                if known.get(task) != version:
                    yield ChangeEvent(task, version)
            for task in sorted(set(known) - set(now)):
                yield ChangeEvent(task, None)
            known = now

    async def ping(self) -> None:
        await asyncio.to_thread(self.root.stat)

    async def close(self) -> None:
        self._closed = True
        self._changed.set()
