"""The running service's core and the routes' one facade: backbone, registry, catalog, cache, engine.

Each route parses its request, makes one call here and renders what comes back
(:meth:`Runtime.classify`, :meth:`~Runtime.upload`, :meth:`~Runtime.status`, ...); health and
metrics read :meth:`~Runtime.status` and :meth:`~Runtime.snapshot`. Nothing here knows about HTTP.

* Every call names a :class:`~service.tasks.TaskRef`: routes resolve the caller's namespace
  first (service.api.deps), so nothing here can reach another tenant's tasks.
* The *catalog* maps each task to its current :class:`VersionInfo`. It is filled at start-up,
  updated by this replica's own writes at once (so after a PUT returns, new requests here use
  the new version) and by the registry's change events (other replicas), with a periodic full
  comparison to catch up on missed events.
* A classify request resolves its task to one version once, then holds that memory object for
  its whole life: a hot swap never changes a request midway. :meth:`Runtime.classify` is the
  only place that resolves and submits, so the rule is held in one function.
* Ids the registry does not know are remembered for a while (a bounded negative cache), so a
  stream of random ids costs one registry read each per ``unknown_ttl_s``, not one per request.
  Every change the catalog learns of (this replica's writes, events, catch-up) removes its id.
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
from datetime import datetime
from pathlib import Path

import torch
from cachetools import TTLCache

from memories.backbone import Backbone
from memories.errors import SpartanError
from memories.memfile import MemoryFile, check_backbone, parse_memory
from memories.precision import ResidentDType
from service.admission import AdmissionStats
from service.cache import CacheStats, LoadedMemory, MemoryCache
from service.engine import Engine, EngineStats, RowRequest
from service.errors import OverloadedError, RegistryFullError, RegistryUnavailableError, TaskNotFoundError
from service.memlimit import DEFAULT_CACHE_BYTES
from service.precision import PrecisionChoice
from service.predictions import Classification, Explain, TextInput, check_inputs
from service.registry.base import Registry, RolloutMode, VersionInfo
from service.rollouts import Arm, TrialStats, scores_other_arm, serving_arm
from service.settings import ServiceSettings
from service.tasks import TaskRef
from service.tenancy import Tenancy
from service.usage import UsageMeter, UsagePeriod, hours_between, period

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
    admissions: dict[str, AdmissionStats]
    admission_margin: float
    engine_queue_depth: int
    catalog_tasks: int
    unknown_ids: int
    unknown_hits: int
    registry_up: bool
    precision: PrecisionChoice
    usage: UsageMeter
    trials: dict[TaskRef, TrialStats]


MAX_BACKGROUND_SCORES = 8
"""Background scores of the other version in flight per replica (canary and shadow trials);
beyond it a comparison is skipped, so a trial never queues work without bound."""


class Runtime:
    def __init__(
        self,
        settings: ServiceSettings,
        backbone: Backbone,
        registry: Registry,
        engine: Engine,
        tenancy: Tenancy,
        precision: PrecisionChoice | None = None,
        cache_bytes: int | None = None,
    ) -> None:
        """``cache_bytes``: the cache's budget where the settings leave it unset (the app sizes it
        from the memory limit, service.memlimit); without either, the default budget."""
        self.settings = settings
        self.tenancy = tenancy
        self.backbone = backbone
        self.precision = precision or PrecisionChoice(backbone.precision, backbone.precision)  # type: ignore[arg-type]
        self.registry = registry
        self.engine = engine
        budget = settings.cache_bytes or cache_bytes or DEFAULT_CACHE_BYTES
        self.cache = MemoryCache(budget, self._load, settings.pinned())
        self.catalog: dict[TaskRef, VersionInfo] = {}
        self.unknown: TTLCache[TaskRef, bool] = TTLCache(settings.unknown_cache_size, settings.unknown_ttl_s)
        self.unknown_hits = 0
        self.usage = UsageMeter(settings.metrics_max_task_series)
        self.registry_error: str | None = None
        self.draining = False  # set on SIGTERM (service.serve): /readyz answers 503, requests still served
        self._sync_task: asyncio.Task[None] | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self.trials: dict[TaskRef, TrialStats] = {}  # this replica's canary / shadow comparisons
        self._scoring: set[asyncio.Task[None]] = set()  # background scores of the other version

    async def start(self) -> None:
        self.engine.start()
        try:
            await self.registry.migrate()
            await self._catch_up()
        except RegistryUnavailableError as exc:
            self.registry_error = str(exc)
        for ref in self.cache.pinned:
            with contextlib.suppress(TaskNotFoundError, RegistryUnavailableError):
                await self.memory(ref)
        self._sync_task = asyncio.create_task(self._sync(), name="registry-sync")
        self._flush_task = asyncio.create_task(self._flush_usage_every(), name="usage-flush")

    async def stop(self) -> None:
        for scoring in list(self._scoring):
            scoring.cancel()
        for task in (self._sync_task, self._flush_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await asyncio.to_thread(self.engine.stop)
        await self.flush_usage()
        await self.registry.close()

    async def flush_usage(self) -> None:
        """Add the usage gathered since the last flush to the registry's ledger (kept if it fails)."""
        records = self.usage.take()
        if not records:
            return
        try:
            await self.registry.add_usage(records)
        except (RegistryUnavailableError, RegistryFullError, OSError) as exc:  # OSError: any other disk fault
            log.warning("usage not written yet (%s); it goes with the next flush", exc)
            self.usage.give_back(records)

    async def _flush_usage_every(self) -> None:
        while True:
            await asyncio.sleep(self.settings.usage_flush_s)
            await self.flush_usage()

    async def usage_period(self, tenant: str, since: datetime | None, until: datetime | None) -> UsagePeriod:
        """The tenant's ledger over the whole clock hours from ``since`` to ``until`` (all replicas,
        this one's unflushed counts included)."""
        first, last = hours_between(since, until)
        await self.flush_usage()
        return period(tenant, first, last, await self.registry.usage(tenant, first, last))

    # --- classifying ---------------------------------------------------------------------

    async def classify(
        self,
        ref: TaskRef,
        inputs: Sequence[TextInput],
        explain: Explain = "none",
        exit_threshold: float | None = None,
    ) -> Classification:
        """Classify ``inputs`` with the task's current memory; one version serves every input.
        ``exit_threshold`` overrides a task's early-exit threshold. Every call is recorded in
        :attr:`usage` with its outcome."""
        started = time.perf_counter()
        try:
            answer, tokens = await self._classify(ref, inputs, explain, exit_threshold)
        except OverloadedError:
            self.usage.record(ref, "rejected", len(inputs), 0, time.perf_counter() - started)
            raise
        except TaskNotFoundError:
            self.usage.record(ref, "error", len(inputs), 0, time.perf_counter() - started, known=False)
            raise
        except Exception:
            self.usage.record(ref, "error", len(inputs), 0, time.perf_counter() - started)
            raise
        self.usage.record(ref, "ok", len(inputs), tokens, time.perf_counter() - started)
        return answer

    async def _classify(
        self, ref: TaskRef, inputs: Sequence[TextInput], explain: Explain, exit_threshold: float | None
    ) -> tuple[Classification, int]:
        settings = self.settings
        check_inputs(inputs, settings.max_inputs, settings.max_text_chars)
        started = time.perf_counter()
        deadline = time.monotonic() + settings.request_timeout_s
        info = await self.resolve(ref)
        rollout = info.rollout
        arm = serving_arm(rollout)
        memory = await self.cache.get(
            ref, rollout.version if rollout and arm == "candidate" else info.version
        )
        self.tenancy.limiter.admit(ref.tenant, len(inputs))
        rows = [RowRequest(item.text, item.pair, memory, explain, exit_threshold) for item in inputs]
        results = await self.engine.submit(rows, deadline)
        answer = Classification(ref.task, memory.version, [result.prediction for result in results])
        if rollout is not None:
            trial = self._trial(ref, rollout.version)
            trial.served[arm].record(time.perf_counter() - started)
            if scores_other_arm(rollout, arm):
                other = info.version if arm == "candidate" else rollout.version
                self._score_in_background(ref, other, inputs, answer, trial, arm)
        return answer, sum(result.tokens for result in results)

    # --- canary and shadow trials (service.rollouts) -------------------------------------

    def _trial(self, ref: TaskRef, candidate: int) -> TrialStats:
        trial = self.trials.get(ref)
        if trial is None or trial.candidate != candidate:
            trial = self.trials[ref] = TrialStats(candidate)
        return trial

    def _score_in_background(
        self,
        ref: TaskRef,
        version: int,
        inputs: Sequence[TextInput],
        served: Classification,
        trial: TrialStats,
        served_by: Arm,
    ) -> None:
        if len(self._scoring) >= MAX_BACKGROUND_SCORES:
            trial.skipped += 1
            return
        task = asyncio.create_task(self._score(ref, version, inputs, served, trial, served_by))
        self._scoring.add(task)
        task.add_done_callback(self._scoring.discard)

    async def _score(
        self,
        ref: TaskRef,
        version: int,
        inputs: Sequence[TextInput],
        served: Classification,
        trial: TrialStats,
        served_by: Arm,
    ) -> None:
        """Score ``inputs`` with the other version and compare with what was served."""
        started = time.perf_counter()
        try:
            memory = await self.cache.get(ref, version)
            rows = [RowRequest(item.text, item.pair, memory, "none") for item in inputs]
            results = await self.engine.submit(rows, time.monotonic() + self.settings.request_timeout_s)
        except SpartanError:
            trial.failed += 1
            return
        other: Arm = "current" if served_by == "candidate" else "candidate"
        trial.scored[other].record(time.perf_counter() - started)
        scored = [result.prediction for result in results]
        if served_by == "candidate":
            trial.compare(scored, served.predictions)
        else:
            trial.compare(served.predictions, scored)

    def trial(self, info: VersionInfo) -> TrialStats:
        """This replica's comparison of the task's candidate (empty before its first request)."""
        assert info.rollout is not None, "only a task with a candidate has a trial"
        return self.trials.get(info.ref) or TrialStats(info.rollout.version)

    async def stage(
        self,
        ref: TaskRef,
        data: bytes,
        mode: RolloutMode,
        share: float,
        if_match: int | None,
    ) -> VersionInfo:
        """Validate a candidate completely, then store it beside the current version on trial."""
        memfile = await self._validated(data)
        metadata, quota = memfile.metadata.model_dump(), self.tenancy.quota(ref.tenant)
        staged = await self.registry.stage(ref, data, memfile.sha256, metadata, mode, share, if_match, quota)
        self._apply(ref, staged)
        return staged

    async def end_rollout(self, ref: TaskRef, promote: bool, if_match: int | None) -> VersionInfo:
        """Promote the candidate (current at once on every replica) or abort its trial (the
        candidate is deleted)."""
        await self.resolve(ref)
        ended = await self.registry.end_rollout(ref, promote, if_match)
        self._apply(ref, ended)
        self.trials.pop(ref, None)
        return ended

    # --- reading -------------------------------------------------------------------------

    @property
    def max_upload_bytes(self) -> int:
        """The largest memory file an upload may send."""
        return self.settings.max_upload_bytes

    @property
    def max_infer_bytes(self) -> int:
        """The largest v2 inference request: every text and pair at its longest, each character
        escaped in JSON (up to 6 bytes), plus room for the rest."""
        settings = self.settings
        return settings.max_inputs * 2 * settings.max_text_chars * 6 + (1 << 20)

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
        if registry_up:
            degraded += await self.registry.degraded()
        if self.tenancy.reload_error:
            degraded.append(
                f"keys file: {self.tenancy.reload_error}; the previous keys and quotas are in force"
            )
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
            admissions=dict(engine.admissions),
            admission_margin=engine.margin.factor,
            engine_queue_depth=engine.queued,
            catalog_tasks=len(self.catalog),
            unknown_ids=len(self.unknown),
            unknown_hits=self.unknown_hits,
            registry_up=self.registry_error is None,
            precision=self.precision,
            usage=self.usage,
            trials=dict(self.trials),
        )

    async def resolve(self, ref: TaskRef) -> VersionInfo:
        """The task's current version as this replica knows it; TaskNotFoundError if absent."""
        info = self.catalog.get(ref)
        if info is None:
            if ref in self.unknown:
                self.unknown_hits += 1
            else:
                info = await self.registry.current(ref)  # a task another replica just created
                if info is None:
                    self.unknown[ref] = True
                else:
                    self._apply(ref, info)
        if info is None:
            raise TaskNotFoundError(f"task {ref.task!r} not found")
        return info

    async def memory(self, ref: TaskRef) -> LoadedMemory:
        info = await self.resolve(ref)
        return await self.cache.get(ref, info.version)

    async def _load(self, ref: TaskRef, version: int) -> LoadedMemory:
        data = await self.registry.read(ref, version)
        return await asyncio.to_thread(self._validate, data, ref, version)

    def _validate(self, data: bytes, ref: TaskRef, version: int) -> LoadedMemory:
        """Parse and check a memory file (off the event loop; CPU work)."""
        memfile = parse_memory(data, self.settings.max_upload_bytes)
        check_backbone(memfile.metadata, self.backbone)
        return _loaded(ref, version, memfile, self.settings.resident_dtype, self.backbone.dtype)

    async def versions(self, ref: TaskRef) -> tuple[VersionInfo, list[VersionInfo]]:
        """The task's current record and its kept versions, newest first (a candidate on trial
        among them); TaskNotFoundError if it does not exist."""
        kept = await self.registry.versions(ref)
        return await self.resolve(ref), kept

    async def version_file(self, ref: TaskRef, version: int) -> tuple[VersionInfo, bytes]:
        """One kept version's record and bytes; TaskNotFoundError naming the kept ones if gone."""
        kept = await self.registry.versions(ref)
        info = next((i for i in kept if i.version == version), None)
        if info is None:
            numbers = ", ".join(str(i.version) for i in kept)
            raise TaskNotFoundError(f"task {ref.task!r} keeps versions {numbers}, not {version}")
        return info, await self.registry.read(ref, version)

    async def page(self, tenant: str, after: str | None, limit: int) -> tuple[list[VersionInfo], str | None]:
        """A page of the tenant's tasks in id order and the cursor of the next page (None: last)."""
        items = await self.registry.list(tenant, after, limit + 1)
        if len(items) <= limit:
            return items, None
        return items[:limit], items[limit - 1].task

    # --- writing -------------------------------------------------------------------------

    async def upload(self, ref: TaskRef, data: bytes, if_match: int | None) -> VersionInfo:
        """Validate completely, then store as the next version; the registry is untouched on error."""
        return await self._store(ref, data, if_match, None)

    async def restore(self, ref: TaskRef, version: int, if_match: int | None) -> VersionInfo:
        """Roll back: store a kept older version's bytes again as the next version (numbers only
        grow, so replicas, caches and ETags see it as any upload), recording where it came from."""
        info, data = await self.version_file(ref, version)
        return await self._store(ref, data, if_match, info.version)

    async def _store(
        self, ref: TaskRef, data: bytes, if_match: int | None, restored_from: int | None
    ) -> VersionInfo:
        memfile = await self._validated(data)
        metadata, quota = memfile.metadata.model_dump(), self.tenancy.quota(ref.tenant)
        info = await self.registry.put(ref, data, memfile.sha256, metadata, if_match, quota, restored_from)
        self._apply(ref, info)
        resident, compute = self.settings.resident_dtype, self.backbone.dtype
        self.cache.prime(await asyncio.to_thread(_loaded, ref, info.version, memfile, resident, compute))
        return info

    async def _validated(self, data: bytes) -> MemoryFile:
        """An uploaded file parsed and checked completely (off the event loop) before any write."""
        memfile: MemoryFile = await asyncio.to_thread(parse_memory, data, self.settings.max_upload_bytes)
        check_backbone(memfile.metadata, self.backbone)
        return memfile

    async def delete(self, ref: TaskRef, if_match: int | None) -> None:
        await self.resolve(ref)
        await self.registry.delete(ref, if_match)
        self._apply(ref, None)

    async def seed(self, folder: Path, tenant: str) -> list[str]:
        """Upload ``<folder>/<task>.safetensors`` into ``tenant``'s namespace for every task it
        does not hold yet."""
        seeded = []
        for path in await asyncio.to_thread(lambda: sorted(folder.glob("*.safetensors"))):
            try:
                ref = TaskRef(tenant, path.name.removesuffix(".safetensors"))
                if await self.registry.current(ref) is None:
                    data = await asyncio.to_thread(path.read_bytes)
                    await self.upload(ref, data, if_match=0)
                    seeded.append(ref.task)
            except SpartanError as exc:
                log.warning("seed memory %s skipped: %s", path, exc)
        return seeded

    # --- replicas ------------------------------------------------------------------------

    def _apply(self, ref: TaskRef, info: VersionInfo | None) -> None:
        if info is None:
            self.catalog.pop(ref, None)
            self.cache.discard(ref)
        else:
            self.unknown.pop(ref, None)
            known = self.catalog.get(ref)
            if (
                known is None
                or known.version < info.version
                or (known.version == info.version and known.rollout != info.rollout)
            ):
                self.catalog[ref] = info

    async def _catch_up(self) -> None:
        """Compare every task's versions (current and candidate) with the registry; fetch changes."""
        states = await self.registry.current_states()
        for ref in set(self.catalog) - set(states):
            self._apply(ref, None)
        for ref, state in states.items():
            known = self.catalog.get(ref)
            if known is None or known.state != state:
                self._apply(ref, await self.registry.current(ref))

    async def _sync(self) -> None:
        """Follow change events and compare all versions every few seconds (missed events)."""
        catch_up = asyncio.create_task(self._periodic_catch_up(), name="registry-catch-up")
        try:
            while True:
                try:
                    async for event in self.registry.events():
                        known = self.catalog.get(event.ref)
                        if event.version is None:
                            self._apply(event.ref, None)
                        elif known is None or (
                            known.version <= event.version
                            and known.state != (event.version, event.candidate)  # not already applied
                        ):
                            self._apply(event.ref, await self.registry.current(event.ref))
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


def _loaded(
    ref: TaskRef, version: int, memfile: MemoryFile, resident: ResidentDType, compute: torch.dtype
) -> LoadedMemory:
    packed = memfile.to_packed(resident, compute)
    return LoadedMemory(ref, version, memfile.metadata, packed, packed.nbytes())
