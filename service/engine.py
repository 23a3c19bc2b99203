"""The engine: one thread that owns torch and runs dynamic, mixed-task micro-batches.

The event loop never runs model code. A request becomes rows (one per text); :meth:`Engine.submit`
admits all of a request's rows into the bounded queue or none of them (``OverloadedError`` ->
429). The engine thread takes the first waiting row, waits up to ``max_wait`` for more, takes
what is queued (up to ``bucket_factor`` batches' worth), sorts it by token length and runs it in
batches of at most ``max_batch_size`` rows (and ``max_batch_tokens`` token slots, padding
included, when set), so rows of similar length share a batch and padding stays small. When more
than one batch's worth was queued, only full batches run; the latest arrivals of the remainder
are carried to the next round (first in line, waiting at most ``max_wait`` again) instead of
running as a small batch: under load, batches stay full. Rows of different tasks and tenants
share a batch (per-row memories, see memories.model.run_batch).

Tenants share the engine fairly. The queue keeps one FIFO per tenant, each bounded by
``tenant_queue_rows``, and hands rows out by weighted deficit round robin (service.fairqueue),
so one tenant's flood never stands in front of another tenant's request. And a light tenant
waits for little more than the batch that is running: a round runs the rows of light tenants
(under a batch's worth in the round) first, in batches of their own (small and quick, at a small
cost in batching to the heavy tenant), and when a tenant whose rows have all run has new rows
waiting, the round's batches not yet run go back to the front of their queues. The other
batches run oldest row first, so rows handed back never starve.

A request the queue cannot serve within its deadline is refused at once (``OverloadedError``,
429 with Retry-After) rather than admitted to time out: the rows that would run before its last
one (its tenant's, and what each other tenant has waiting or sends meanwhile, up to its share;
service.fairqueue) times the engine's recent seconds per row is more than the time it has left.
Rows whose deadline has passed anyway are answered with ``DeadlineExceededError`` without running.
Each row's prediction (softmax, labels, the ``explain`` reductions) is made here too
(service.predictions), so the event loop only hands out finished answers.
With ``buckets`` (a compiled backbone, memories.compiled) every batch is padded to a bucket shape.

Results go back to the event loop with ``call_soon_threadsafe``. :meth:`Engine.stop` stops
admission, finishes every admitted row and joins the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from memories.backbone import Backbone
from memories.compiled import Buckets
from memories.model import run_batch
from service.admission import AdmissionStats, DrainRate, Margin
from service.cache import LoadedMemory
from service.errors import DeadlineExceededError, OverloadedError, ShuttingDownError
from service.fairqueue import FairQueue
from service.memlimit import HeapTrimmer
from service.predictions import Explain, Prediction, predict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowRequest:
    """One text (or text pair) to classify with one memory."""

    text: str
    pair: str | None
    memory: LoadedMemory
    explain: Explain = "none"
    exit_threshold: float | None = None  # early exits: None = the task's threshold


@dataclass(frozen=True)
class RowResult:
    """The head output of one row (one float per output), its token count, its prediction, and
    the number of the batch that ran it (``EngineStats.batches`` once that batch was counted)."""

    logits: list[float]
    tokens: int
    prediction: Prediction
    batch: int


@dataclass
class _Row:
    request: RowRequest
    deadline: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[RowResult]
    encoding: dict[str, list[int]] = field(default_factory=dict)

    @property
    def tenant(self) -> str:
        return self.request.memory.ref.tenant


@dataclass
class EngineStats:
    """Counters for the metrics endpoint (written by the engine thread, read anywhere)."""

    batches: int = 0
    rows: int = 0
    expired: int = 0
    refused_late: int = 0  # requests refused at admission: the queue could not serve them in time
    failed: int = 0
    busy_seconds: float = 0.0
    tokens: int = 0  # real tokens run
    padded_tokens: int = 0  # token slots run, padding included (tokens / padded_tokens = padding efficiency)
    exited_early: int = 0  # rows that left the backbone at an early exit (memories.exits)
    heap_trims: int = 0  # times the idle engine handed freed heap pages back (service.memlimit.HeapTrimmer)
    put_back: int = 0  # rows a round handed back to the queue so another tenant's rows could run first
    batch_sizes: dict[int, int] = field(default_factory=dict)  # size -> batches; at most max_batch_size keys


class Engine:
    def __init__(
        self,
        backbone: Backbone,
        max_batch_size: int = 32,
        max_wait_s: float = 0.005,
        queue_size: int = 1024,
        threads: int = 1,
        bucket_factor: int = 4,
        cpus: set[int] | None = None,
        buckets: Buckets | None = None,
        tenant_queue_rows: int | None = None,
        weight: Callable[[str], float] = lambda tenant: 1.0,
        max_batch_tokens: int | None = None,
        trim_every_s: float = 0.0,
        admit_by_deadline: bool = True,
    ) -> None:
        self.backbone = backbone
        self.admit_by_deadline = admit_by_deadline  # refuse what the queue cannot serve in time
        # wall seconds per row served over the last rounds: batch compute plus what a round spends
        # around it (tokenising, collecting, and the event loop's share of a shared CPU)
        self.drain = DrainRate()
        self.margin = Margin()  # how far admission's estimates fell short, measured
        self.trimmer = HeapTrimmer(trim_every_s)  # freed heap pages back to the system when idle
        self.buckets = buckets  # pad every batch to a bucket shape (a compiled backbone's shapes)
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens  # token slots per batch (None: no limit)
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.threads = threads
        self.bucket_factor = bucket_factor
        self.cpus = cpus
        self.stats = EngineStats()
        self.admissions: dict[str, AdmissionStats] = {}  # per tenant (tenants are bounded by the keys)
        self._queue: FairQueue[_Row] = FairQueue(queue_size, tenant_queue_rows or queue_size, weight)
        self._admission = threading.Lock()
        self._accepting = False
        self._thread = threading.Thread(target=self._run, name="spartan-engine", daemon=True)

    @property
    def row_seconds(self) -> float | None:
        return self.drain.row_seconds

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def held(self, tenant: str) -> int:
        """The tenant's rows admitted and not answered yet (waiting or in the engine's round)."""
        return self._queue.held(tenant)

    def start(self) -> None:
        self._accepting = True
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Refuse new rows, finish the admitted ones, join the thread."""
        with self._admission:
            self._accepting = False
        self._thread.join(timeout)

    async def submit(self, rows: Sequence[RowRequest], deadline: float) -> list[RowResult]:
        """Classify the rows (all admitted or none); ``deadline`` is a time.monotonic() value."""
        loop = asyncio.get_running_loop()
        items = [_Row(r, deadline, loop, loop.create_future()) for r in rows]
        tenants = {r.memory.ref.tenant for r in rows}
        assert len(tenants) == 1, f"a request's rows belong to one tenant, got {sorted(tenants)}"
        tenant = tenants.pop()
        with self._admission:
            if not self._accepting:
                raise ShuttingDownError("the service is shutting down")
            expected = self._refuse_if_late(tenant, len(items), deadline)
            self._queue.put_all(tenant, items)
        admitted = time.monotonic()
        late = False
        try:
            return await asyncio.wait_for(
                asyncio.gather(*(i.future for i in items)), max(0.0, deadline - admitted)
            )
        except TimeoutError:
            late = True
            raise DeadlineExceededError("the request's deadline passed before it was served") from None
        finally:
            if expected is not None:
                waited = time.monotonic() - admitted
                self.margin.observe(expected, waited)
                stats = self.admissions.setdefault(tenant, AdmissionStats())
                stats.record(deadline - admitted, expected, waited, late)

    def _refuse_if_late(self, tenant: str, rows: int, deadline: float) -> float | None:
        """The expected wait of a new request (None: no estimate yet); OverloadedError when the
        rows before its last one, times the measured margin, would take longer than its deadline
        leaves and the check is on."""
        row_seconds = self.row_seconds
        if row_seconds is None:
            return None
        expected = self._queue.rows_before(tenant, rows, row_seconds) * row_seconds
        covered = expected * self.margin.factor
        left = deadline - time.monotonic()
        if self.admit_by_deadline and covered > left:
            self.stats.refused_late += 1
            raise OverloadedError(
                f"the queue holds about {covered:.1f} s of work before this request, more than its "
                f"{max(left, 0.0):.1f} s deadline; retry later",
                retry_after=covered - left,
            )
        return expected

    def _run(self) -> None:
        if self.cpus is not None:
            os.sched_setaffinity(0, self.cpus)  # 0: this thread only
        torch.set_num_threads(self.threads)
        carried: list[_Row] = []  # latest arrivals held back from a partial batch, first in line next time
        while True:
            if carried:
                rows, carried = carried, []
            else:
                first = self._queue.get(timeout=0.05)
                if first is None:
                    if not self._accepting:
                        return
                    if self.trimmer.maybe_trim():
                        self.stats.heap_trims += 1
                    continue
                rows = [first]
            started, served = time.perf_counter(), self.stats.rows
            if len(rows) + self._queue.qsize() < self.max_batch_size:
                time.sleep(self.max_wait_s)  # one wake-up for the whole window, not one per arriving row
            limit = self.max_batch_size * self.bucket_factor
            while len(rows) < limit and (row := self._queue.get_nowait()) is not None:
                rows.append(row)
            full = len(rows) - len(rows) % self.max_batch_size
            if full and full < len(rows):
                rows, carried = rows[:full], rows[full:]  # run full batches; the rest waits for company
            self._process(rows)
            self._observe(time.perf_counter() - started, self.stats.rows - served)
            self.trimmer.worked()

    def _observe(self, seconds: float, rows: int) -> None:
        """Count one round's wall time and rows served in the drain rate. Wall time, not the
        batches' compute alone: under a 2x overload the event loop takes a large share of a
        one-core server, and the compute-only figure let admitted requests time out (504s in
        docs/reliability.md, section 5)."""
        self.drain.observe(seconds, rows)

    def _process(self, rows: list[_Row]) -> None:
        now = time.monotonic()
        live = []
        for row in rows:
            if row.deadline <= now or row.future.cancelled():
                self.stats.expired += 1
                expired = DeadlineExceededError("the request's deadline passed before it was served")
                self._answer([(row, expired)])
                continue
            try:
                meta = row.request.memory.metadata
                if not row.encoding:  # rows put back by a previous round are encoded already
                    row.encoding = self.backbone.encode(
                        row.request.text, row.request.pair, meta.max_seq_length
                    )
            except Exception as exc:
                self.stats.failed += 1
                self._answer([(row, exc)])
                continue
            live.append(row)
        live.sort(key=lambda r: len(r.encoding["input_ids"]))
        share = Counter(row.tenant for row in live)
        # light tenants' rows (under a batch's worth in this round) run first, in batches of their own
        light = [r for r in live if share[r.tenant] < self.max_batch_size]
        heavy = [r for r in live if share[r.tenant] >= self.max_batch_size]
        first, others = (
            (self._split(light), self._split(heavy)) if light and heavy else ([], self._split(live))
        )
        # then the batch holding the oldest row, so rows put back by earlier rounds never starve
        batches = first + sorted(others, key=lambda batch: min(row.deadline for row in batch))
        for i, batch in enumerate(batches):
            unrun = [row for later in batches[i:] for row in later]
            if i and self._queue.others_waiting({row.tenant for row in unrun}):  # another tenant's turn
                unrun.sort(key=lambda row: row.deadline)  # deadline order = arrival order
                self._queue.put_back([(row.tenant, row) for row in unrun])
                self.stats.put_back += len(unrun)
                return
            self._run_batch(batch)

    def _split(self, rows: list[_Row]) -> list[list[_Row]]:
        """Consecutive batches of at most ``max_batch_size`` rows and ``max_batch_tokens`` token
        slots (rows x the longest row, padding included), so no batch runs much longer than the rest."""
        batches: list[list[_Row]] = [[]]
        longest = 0
        for row in rows:
            length = len(row.encoding["input_ids"])
            current = batches[-1]
            slots = (len(current) + 1) * max(longest, length)
            too_many = self.max_batch_tokens is not None and slots > self.max_batch_tokens
            if current and (len(current) == self.max_batch_size or too_many):
                current, longest = [], 0
                batches.append(current)
            current.append(row)
            longest = max(longest, length)
        return [batch for batch in batches if batch]

    def _run_batch(self, rows: list[_Row]) -> None:
        tick = time.perf_counter()
        try:
            batch = self.backbone.collate([r.encoding for r in rows])
            memories = [r.request.memory.packed for r in rows]
            thresholds = [r.request.exit_threshold for r in rows]
            if self.buckets is not None:
                batch = self.buckets.fit(batch, self.backbone.tokenizer.pad_token_id or 0)
                padding = batch.input_ids.shape[0] - len(rows)
                memories += memories[:1] * padding  # padding rows copy row 0
                thresholds += thresholds[:1] * padding
            explain = any(r.request.explain != "none" for r in rows)
            out = run_batch(self.backbone, batch, memories, explain, thresholds)
        except Exception as exc:  # a bug, not user input: answer every row, keep serving
            log.exception("batch of %d rows failed", len(rows))
            self.stats.failed += len(rows)
            self._answer([(row, exc) for row in rows])
            return
        elapsed = time.perf_counter() - tick
        self.stats.busy_seconds += elapsed
        self.stats.batches += 1
        self.stats.rows += len(rows)
        self.stats.tokens += int(batch.attention_mask[: len(rows)].sum())  # bucket padding rows excluded
        self.stats.padded_tokens += batch.attention_mask.numel()
        self.stats.batch_sizes[len(rows)] = self.stats.batch_sizes.get(len(rows), 0) + 1
        last = self.backbone.num_layers - 1
        self.stats.exited_early += sum(layer < last for layer in out.exit_layers[: len(rows)])
        results: list[tuple[_Row, RowResult | BaseException]] = []
        for i, row in enumerate(rows):
            request, tokens = row.request, len(row.encoding["input_ids"])
            gates = out.routing[i] if out.routing is not None else None  # [L, S, Np]; None: LoRA-XS
            routing = gates[:, :tokens] if gates is not None else None
            logits = out.logits[i].tolist()
            try:
                prediction = predict(
                    request.memory.metadata, logits, routing, request.explain, out.exit_layers[i]
                )
            except Exception as exc:  # a bug, not user input: this row fails, the others are answered
                log.exception("prediction of one row failed")
                self.stats.failed += 1
                results.append((row, exc))
                continue
            results.append((row, RowResult(logits, tokens, prediction, self.stats.batches)))
        self._answer(results)

    def _answer(self, outcomes: Sequence[tuple[_Row, RowResult | BaseException]]) -> None:
        """Hand the rows' outcomes to their requests; the queue stops counting them as held."""
        self._queue.done([row.tenant for row, _ in outcomes])
        _resolve_all(outcomes)


def _resolve_all(outcomes: Sequence[tuple[_Row, RowResult | BaseException]]) -> None:
    """Hand results to their event loops: one wake-up per loop, not one per row."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Row, RowResult | BaseException]]] = {}
    for row, outcome in outcomes:
        by_loop.setdefault(row.loop, []).append((row, outcome))

    def apply(items: list[tuple[_Row, RowResult | BaseException]]) -> None:
        for row, outcome in items:
            if row.future.done():
                continue
            if isinstance(outcome, BaseException):
                row.future.set_exception(outcome)
            else:
                row.future.set_result(outcome)

    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # RuntimeError: the loop is closed, nobody waits any more
            loop.call_soon_threadsafe(apply, items)
