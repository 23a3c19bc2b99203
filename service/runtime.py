"""The running service's core and the routes' one facade: backbone, registry, catalog, cache, engine.

Each route parses its request, makes one call here and renders what comes back
(:meth:`Runtime.classify`, :meth:`~Runtime.upload`, :meth:`~Runtime.status`, ...); health and
metrics read :meth:`~Runtime.status` and :meth:`~Runtime.snapshot`. Nothing here knows about HTTP.

* The *catalog* maps each task to its current :class:`VersionInfo`. It is filled at start-up,
  updated by this replica's own writes at once (so after a PUT returns, new requests here use
  the new version) and by the registry's change events (other replicas), with a periodic full
  comparison to catch up on missed events.
* A classify request resolves its task to one version once, then holds that memory object for
  its whole life: a hot swap never changes a request midway. :meth:`Runtime.classify` is the
  only place that resolves and submits, so the rule is held in one function.
* When the registry is unreachable, tasks already in the catalog and cache keep classifying,
  ``degraded`` says why, and writes fail with RegistryUnavailableError (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from memories.backbone import Backbone
from memories.errors import SpartanError
from memories.memfile import MemoryFile, check_backbone, parse_memory
from memories.precision import ResidentDType
from service.auth import Caller
from service.cache import CacheStats, LoadedMemory, MemoryCache
from service.engine import Engine, EngineStats, RowRequest
from service.errors import RegistryUnavailableError, TaskNotFoundError
from service.precision import PrecisionChoice
from service.predictions import Classification, Explain, TextInput, check_inputs
from service.registry.base import Registry, VersionInfo
from service.settings import ServiceSettings
from service.tasks import validate_task_id

log = logging.getLogger(__name__)

CATCH_UP_SECONDS = 5.0


@dataclass(frozen=True)
class Status:
    """What readiness reports: the backbone, the registry's state and what is degraded."""

    backbone: str
    precision: PrecisionChoice
    registry_up: bool
    degraded: list[str]
    resident_tasks: int
    resident_bytes: int


@dataclass(frozen=True)
class Snapshot:
    """The counters and gauges the metrics endpoint exports, read at scrape time."""

    cache: CacheStats
    cache_resident_bytes: int
    cache_capacity_bytes: int
    cache_resident_tasks: int
    engine: EngineStats
    engine_queue_depth: int
    catalog_tasks: int
    registry_up: bool
    precision: PrecisionChoice


class Runtime:
    def __init__(
        self,
        settings: ServiceSettings,
        backbone: Backbone,
        registry: Registry,
        engine: Engine,
        precision: PrecisionChoice | None = None,
    ) -> None:
        self.settings = settings
        self.backbone = backbone
        self.precision = precision or PrecisionChoice(backbone.precision, backbone.precision)  # type: ignore[arg-type]
        self.registry = registry
        self.engine = engine
        self.cache = MemoryCache(settings.cache_bytes, self._load, settings.pinned_tasks)
        self.catalog: dict[str, VersionInfo] = {}
        self.registry_error: str | None = None
        self._sync_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.engine.start()
        try:
            await self._catch_up()
        except RegistryUnavailableError as exc:
            self.registry_error = str(exc)
        for task in self.settings.pinned_tasks:
            with contextlib.suppress(TaskNotFoundError, RegistryUnavailableError):
                await self.memory(task, Caller("", admin=True))
        self._sync_task = asyncio.create_task(self._sync(), name="registry-sync")

    async def stop(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
        await asyncio.to_thread(self.engine.stop)
        await self.registry.close()

    # --- classifying ---------------------------------------------------------------------

    async def classify(
        self, task: str, caller: Caller, inputs: Sequence[TextInput], explain: Explain = "none"
    ) -> Classification:
        """Classify ``inputs`` with the task's current memory; one version serves every input."""
        settings = self.settings
        check_inputs(inputs, settings.max_inputs, settings.max_text_chars)
        deadline = time.monotonic() + settings.request_timeout_s
        memory = await self.memory(task, caller)
        rows = [RowRequest(item.text, item.pair, memory, explain) for item in inputs]
        results = await self.engine.submit(rows, deadline)
        return Classification(task, memory.version, [result.prediction for result in results])

    # --- reading -------------------------------------------------------------------------

    @property
    def max_upload_bytes(self) -> int:
        """The largest memory file an upload may send."""
        return self.settings.max_upload_bytes

    async def status(self) -> Status:
        """Readiness: asks the registry now, and says what is degraded and what still works."""
        degraded = []
        registry_up = True
        try:
            await self.registry.ping()
        except RegistryUnavailableError as exc:
            registry_up = False
            degraded.append(f"registry: {exc}; cached tasks still classify, uploads answer 503")
        if self.registry_error and registry_up:
            degraded.append(f"registry events: {self.registry_error}")
        return Status(
            self.backbone.name,
            self.precision,
            registry_up,
            degraded,
            len(self.cache),
            self.cache.resident_bytes,
        )

    def snapshot(self) -> Snapshot:
        """The metrics' numbers right now (no I/O: safe to call while scraping)."""
        cache, engine = self.cache, self.engine
        return Snapshot(
            cache=cache.stats,
            cache_resident_bytes=cache.resident_bytes,
            cache_capacity_bytes=cache.capacity_bytes,
            cache_resident_tasks=len(cache),
            engine=engine.stats,
            engine_queue_depth=engine.queued,
            catalog_tasks=len(self.catalog),
            registry_up=self.registry_error is None,
            precision=self.precision,
        )

    async def resolve(self, task: str, caller: Caller) -> VersionInfo:
        """The task's current version as this replica knows it; TaskNotFoundError if invisible."""
        validate_task_id(task)
        info = self.catalog.get(task)
        if info is None:
            info = await self.registry.current(task)  # a task another replica just created
            if info is not None:
                self.catalog[task] = info
        if info is None or not caller.can_see(info):
            raise TaskNotFoundError(f"task {task!r} not found")
        return info

    async def memory(self, task: str, caller: Caller) -> LoadedMemory:
        info = await self.resolve(task, caller)
        return await self.cache.get(task, info.version)

    async def _load(self, task: str, version: int) -> LoadedMemory:
        data = await self.registry.read(task, version)
        return await asyncio.to_thread(self._validate, data, task, version)

    def _validate(self, data: bytes, task: str, version: int) -> LoadedMemory:
        """Parse and check a memory file (off the event loop; CPU work)."""
        memfile = parse_memory(data, self.settings.max_upload_bytes)
        check_backbone(memfile.metadata, self.backbone)
        return _loaded(task, version, memfile, self.settings.resident_dtype)

    async def page(
        self, caller: Caller, after: str | None, limit: int
    ) -> tuple[list[VersionInfo], str | None]:
        """A page of visible tasks in id order and the cursor of the next page (None: last page)."""
        items: list[VersionInfo] = []
        cursor = after
        while len(items) < limit:
            page = await self.registry.list(cursor, limit)
            items.extend(info for info in page if caller.can_see(info))
            if len(page) < limit:
                return items[:limit], None
            cursor = page[-1].task
        return items[:limit], items[limit - 1].task

    # --- writing -------------------------------------------------------------------------

    async def upload(self, task: str, data: bytes, caller: Caller, if_match: int | None) -> VersionInfo:
        """Validate completely, then store as the next version; the registry is untouched on error."""
        validate_task_id(task)
        memfile: MemoryFile = await asyncio.to_thread(parse_memory, data, self.settings.max_upload_bytes)
        check_backbone(memfile.metadata, self.backbone)
        info = await self.registry.put(
            task, data, memfile.sha256, memfile.metadata.model_dump(), caller.tenant, if_match, caller.admin
        )
        self._apply(task, info)
        resident = self.settings.resident_dtype
        self.cache.prime(await asyncio.to_thread(_loaded, task, info.version, memfile, resident))
        return info

    async def delete(self, task: str, caller: Caller, if_match: int | None) -> None:
        await self.resolve(task, caller)
        await self.registry.delete(task, if_match)
        self._apply(task, None)

    async def seed(self, folder: Path, owner: str) -> list[str]:
        """Upload ``<folder>/<task>.safetensors`` for every task the registry does not have yet."""
        seeded = []
        for path in await asyncio.to_thread(lambda: sorted(folder.glob("*.safetensors"))):
            task = path.name.removesuffix(".safetensors")
            if await self.registry.current(task) is None:
                try:
                    data = await asyncio.to_thread(path.read_bytes)
                    await self.upload(task, data, Caller(owner, admin=True), if_match=0)
                except SpartanError as exc:
                    log.warning("seed memory %s skipped: %s", path, exc)
                    continue
                seeded.append(task)
        return seeded

    # --- replicas ------------------------------------------------------------------------

    def _apply(self, task: str, info: VersionInfo | None) -> None:
        if info is None:
            self.catalog.pop(task, None)
            self.cache.discard(task)
        elif task not in self.catalog or self.catalog[task].version < info.version:
            self.catalog[task] = info

    async def _catch_up(self) -> None:
        """Compare every task's version with the registry and fetch what changed."""
        versions = await self.registry.current_versions()
        for task in set(self.catalog) - set(versions):
            self._apply(task, None)
        for task, version in versions.items():
            known = self.catalog.get(task)
            if known is None or known.version != version:
                self._apply(task, await self.registry.current(task))

    async def _sync(self) -> None:
        """Follow change events and compare all versions every few seconds (missed events)."""
        catch_up = asyncio.create_task(self._periodic_catch_up(), name="registry-catch-up")
        try:
            while True:
                try:
                    async for event in self.registry.events():
                        known = self.catalog.get(event.task)
                        if event.version is None:
                            self._apply(event.task, None)
                        elif known is None or known.version < event.version:
                            self._apply(event.task, await self.registry.current(event.task))
                except RegistryUnavailableError as exc:
                    self.registry_error = str(exc)
                    await asyncio.sleep(1.0)
        finally:
            catch_up.cancel()

    async def _periodic_catch_up(self) -> None:
        while True:
            await asyncio.sleep(CATCH_UP_SECONDS if self.registry_error is None else 1.0)
            try:
                await self._catch_up()
                self.registry_error = None
            except RegistryUnavailableError as exc:
                self.registry_error = str(exc)


def _loaded(task: str, version: int, memfile: MemoryFile, resident: ResidentDType) -> LoadedMemory:
    packed = memfile.to_packed(resident)
    return LoadedMemory(task, version, memfile.metadata, packed, packed.nbytes())
