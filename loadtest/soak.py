"""Long runs under a changing load: the soak and overload over time, each a report with a timeline.

Both start one ``spartan serve`` (file registry, API keys for several tenants, a cache that holds
half of the memories), measure its capacity with a short closed loop, then send open-loop
(Poisson) load whose rate follows a schedule of segments, split over the tenants by Zipf
popularity, each tenant's requests over its own tasks by Zipf popularity too. Each segment's
generators start on time, whatever the previous segment still has in flight. Every
``sample_every_s`` the server's ``/metrics`` are read (RSS, queue depth, cache bytes), and the
answers are cut into windows of that length: inst/min answered, p50/p95/p99, status counts.

* **soak** (:func:`soak_schedule`): ``base_load`` x capacity, with bursts of ``burst_s`` at
  ``burst_load`` x capacity every ``burst_every_s``; meanwhile a new version of the busiest task
  every ``hot_swap_every_s``, and every ``churn_every_s`` a new task uploaded (and asked once)
  while the oldest such task is deleted. Targets: no 5xx, no request without an answer, RSS slope
  after warm-up <= 1 MiB/min, the steady p95 of the last ``compare_s`` within 20% of the steady
  p95 of the ``compare_s`` after warm-up (steady: not in a burst or the ``settle_s`` after one).
* **overload** (:func:`overload_schedule`): ``normal_s`` at ``base_load``, ``overload_s`` at
  ``burst_load`` (2x), ``normal_s`` at ``base_load`` again; no registry changes. Targets: admitted
  p99 under the request deadline, every shed request a 429 with Retry-After, the queue never
  beyond ``queue_size``, RSS slope during the overload <= 1 MiB/min, and p95 back within 20% of
  the first normal phase's within ``recover_within_s`` of the overload's end.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import httpx

from loadtest.cgroup import Limits
from loadtest.errors import LoadTestError
from loadtest.generator import DROPPED, NO_ANSWER, LoadGenerator, LoadOptions, Sample
from loadtest.launcher import start_server
from loadtest.report import latency_summary, percentile, scrape
from loadtest.synthetic import random_memories
from loadtest.workload import Zipf, load_texts
from memories.atomic import write_figure
from memories.backbones import load_backbone
from memories.lab.host import machine
from memories.memfile import MemoryFile
from service.client import AsyncSpartanClient, ServiceHTTPError
from service.keysfile import add_key

Kind = Literal["soak", "overload"]
MIB = 1 << 20


@dataclass(frozen=True)
class SoakOptions:
    data: Path
    kind: Kind = "soak"
    texts: str = "sst2"
    backbone: str = "minilm"
    duration_s: float = 1800.0  # soak only; overload lasts normal + overload + normal
    tenants: int = 4
    tasks_per_tenant: int = 12
    zipf_s: float = 1.1  # popularity of tenants and of the tasks within a tenant
    texts_per_request: int = 8  # one generator process can then offer 2x capacity in instances
    capacity_probe_s: float = 10.0
    base_load: float = 0.6  # x capacity
    burst_load: float = 2.0  # x capacity
    burst_every_s: float = 180.0
    burst_s: float = 20.0
    settle_s: float = 10.0  # after a burst, before the load counts as steady again
    warmup_s: float = 120.0
    compare_s: float = 120.0
    hot_swap_every_s: float = 5.0
    churn_every_s: float = 15.0
    churn_keep: int = 4  # churned tasks alive at once
    normal_s: float = 60.0  # overload: before and after
    overload_s: float = 600.0
    recover_within_s: float = 5.0
    sample_every_s: float = 5.0
    max_seq_length: int = 64
    server_cpuset: str | None = None
    server_settings: tuple[tuple[str, str], ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tenants < 1 or self.tasks_per_tenant < 1 or self.texts_per_request < 1:
            raise LoadTestError("tenants, tasks per tenant and texts per request must be at least 1")
        if not 0 < self.base_load < self.burst_load:
            raise LoadTestError(
                f"need 0 < base load < burst load, got {self.base_load} and {self.burst_load}"
            )
        if self.kind == "soak" and self.duration_s < self.warmup_s + 2 * self.compare_s:
            raise LoadTestError(
                f"a soak of {self.duration_s:g} s is too short for a warm-up of {self.warmup_s:g} s "
                f"and two comparison periods of {self.compare_s:g} s"
            )


@dataclass(frozen=True)
class Segment:
    start_s: float
    duration_s: float
    load: float  # x capacity
    burst: bool


def soak_schedule(options: SoakOptions) -> list[Segment]:
    """Base load with a burst every ``burst_every_s``, none in the warm-up or the last comparison period."""
    segments, t = [], 0.0
    last_burst_end = options.duration_s - options.compare_s - options.settle_s
    while t < options.duration_s:
        burst_at = t + options.burst_every_s - options.burst_s
        if burst_at >= options.warmup_s + options.compare_s and burst_at + options.burst_s <= last_burst_end:
            segments.append(Segment(t, burst_at - t, options.base_load, False))
            segments.append(Segment(burst_at, options.burst_s, options.burst_load, True))
            t = burst_at + options.burst_s
        else:
            end = min(options.duration_s, t + options.burst_every_s)
            segments.append(Segment(t, end - t, options.base_load, False))
            t = end
    return segments


def overload_schedule(options: SoakOptions) -> list[Segment]:
    n, o = options.normal_s, options.overload_s
    return [
        Segment(0.0, n, options.base_load, False),
        Segment(n, o, options.burst_load, True),
        Segment(n + o, n, options.base_load, False),
    ]


@dataclass
class Tenant:
    name: str
    key: str
    share: float  # of the offered load
    tasks: list[str]


@dataclass
class Background:
    """What the registry jobs did, and the refusals or failures they met (status -> count)."""

    hot_swaps: int = 0
    uploads: int = 0
    deletes: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    events: list[tuple[float, str]] = field(default_factory=list)  # (t, what), failures only


async def _guarded(background: Background, t0: float, what: str, call: Awaitable[object]) -> bool:
    """Await one registry call; a refusal or a missing answer is counted and noted, not raised."""
    try:
        await call
        return True
    except ServiceHTTPError as exc:
        background.errors[str(exc.status)] += 1
        background.events.append((time.monotonic() - t0, f"{what}: {exc.status} {exc.detail}"))
    except httpx.HTTPError as exc:
        background.errors["no answer"] += 1
        background.events.append((time.monotonic() - t0, f"{what}: {type(exc).__name__}"))
    return False


async def _hot_swaps(
    url: str,
    tenant: Tenant,
    versions: Sequence[bytes],
    every_s: float,
    until: float,
    bg: Background,
    t0: float,
) -> None:
    async with AsyncSpartanClient(url, tenant.key, timeout=60) as client:
        for n in itertools.count():
            await asyncio.sleep(every_s)
            if time.monotonic() >= until:
                return
            blob = versions[n % len(versions)]
            if await _guarded(bg, t0, "hot swap", client.put_memory(tenant.tasks[0], blob)):
                bg.hot_swaps += 1


async def _churn(
    url: str,
    tenants: Sequence[Tenant],
    blob: bytes,
    text: str,
    options: SoakOptions,
    until: float,
    bg: Background,
    t0: float,
) -> None:
    """Every churn_every_s one tenant (in turn) uploads a new task, asks it once, and deletes its
    oldest such task beyond churn_keep."""
    clients = [AsyncSpartanClient(url, t.key, timeout=60) for t in tenants]
    alive: list[list[str]] = [[] for _ in tenants]
    try:
        for n in itertools.count():
            await asyncio.sleep(options.churn_every_s)
            if time.monotonic() >= until:
                return
            i = n % len(tenants)
            client, name = clients[i], f"churn-{n}"
            if await _guarded(bg, t0, f"upload {name}", client.put_memory(name, blob)):
                bg.uploads += 1
                alive[i].append(name)
                await _guarded(bg, t0, f"classify {name}", client.classify(name, [text]))
            while len(alive[i]) > options.churn_keep:
                old = alive[i].pop(0)
                if await _guarded(bg, t0, f"delete {old}", client.delete_memory(old)):
                    bg.deletes += 1
    finally:
        for client in clients:
            await client.aclose()


async def _sample_metrics(
    url: str, key: str, every_s: float, t0: float, into: list[dict[str, float | None]]
) -> None:
    async with AsyncSpartanClient(url, key, timeout=30) as client:
        while True:
            try:
                m = scrape(await client.metrics())
            except httpx.HTTPError:  # a gap in the timeline; the requests' statuses say what happened
                m = {}
            into.append(
                {
                    "t": round(time.monotonic() - t0, 2),
                    "rss_bytes": m.get("spartan_process_resident_bytes"),
                    "queue_depth": m.get("spartan_engine_queue_depth"),
                    "cache_bytes": m.get("spartan_cache_resident_bytes"),
                }
            )
            await asyncio.sleep(every_s)


async def _segment(
    url: str,
    tenants: Sequence[Tenant],
    texts: list[str],
    options: SoakOptions,
    capacity: float,
    seg: Segment,
    t0: float,
    seed: int,
) -> list[tuple[float, Sample]]:
    """One segment's load, started at its time; (start in seconds since t0, sample) per request."""
    await asyncio.sleep(max(0.0, t0 + seg.start_s - time.monotonic()))
    per_request = options.texts_per_request
    generators = []
    for j, tenant in enumerate(tenants):
        rate = seg.load * capacity * tenant.share / per_request  # requests/s
        load = LoadOptions(
            mode="open", rate=rate, duration_s=seg.duration_s, texts_per_request=per_request, seed=seed + j
        )
        popularity = Zipf(len(tenant.tasks), options.zipf_s, seed + j)
        generators.append(LoadGenerator(url, tenant.tasks, texts, popularity, load, tenant.key))
    await asyncio.gather(*(g.run() for g in generators))
    return [(g.started_at - t0 + s.start, s) for g in generators for s in g.samples]


def _windows(
    timed: Sequence[tuple[float, Sample]],
    metrics: Sequence[dict[str, float | None]],
    every_s: float,
    end: float,
) -> list[dict[str, object]]:
    """Per window of ``every_s`` (by the time an answer arrived): throughput, latency, statuses, and
    the last metrics sample taken in it."""
    count = max(1, int(end // every_s) + 1)
    bins: list[list[Sample]] = [[] for _ in range(count)]
    for start, sample in timed:
        bins[min(count - 1, int((start + sample.latency) // every_s))].append(sample)
    rows = []
    for i, samples in enumerate(bins):
        lo, hi = i * every_s, (i + 1) * every_s
        ok = sorted(s.latency for s in samples if s.status == 200)
        inside = [m for m in metrics if lo <= (m["t"] or 0.0) < hi]
        last: dict[str, float | None] = inside[-1] if inside else {}
        rss, cache = last.get("rss_bytes"), last.get("cache_bytes")
        rows.append(
            {
                "t_end": round(hi, 1),
                "inst_per_min": round(60 * sum(s.inputs for s in samples if s.status == 200) / every_s, 1),
                "latency_s": latency_summary(ok, with_max=False),
                "statuses": dict(sorted(Counter(_status(s) for s in samples).items())),
                "rss_mib": round(rss / MIB, 1) if rss is not None else None,
                "queue_depth": last.get("queue_depth"),
                "cache_mib": round(cache / MIB, 2) if cache is not None else None,
            }
        )
    return rows


def _five_xx(statuses: Counter[str]) -> int:
    return sum(n for code, n in statuses.items() if code.isdigit() and int(code) >= 500)


def _status(sample: Sample) -> str:
    return {NO_ANSWER: "no answer", DROPPED: "dropped by the generator"}.get(
        sample.status, str(sample.status)
    )


def rss_slope_mib_per_min(
    metrics: Sequence[dict[str, float | None]], since: float, until: float
) -> float | None:
    """Least-squares slope of RSS over time between ``since`` and ``until`` (MiB per minute)."""
    points = [
        (t / 60, rss / MIB)
        for m in metrics
        if (t := m["t"]) is not None and since <= t <= until and (rss := m["rss_bytes"]) is not None
    ]
    if len(points) < 3:
        return None
    slope, _ = statistics.linear_regression([t for t, _ in points], [r for _, r in points])
    return round(slope, 3)


def _p95(
    timed: Sequence[tuple[float, Sample]],
    since: float,
    until: float,
    schedule: Sequence[Segment],
    settle_s: float,
) -> float | None:
    """p95 of answered requests started in [since, until) outside bursts and their settling time."""

    def steady(t: float) -> bool:
        return not any(s.burst and s.start_s <= t < s.start_s + s.duration_s + settle_s for s in schedule)

    latencies = sorted(s.latency for t, s in timed if since <= t < until and s.status == 200 and steady(t))
    return percentile(latencies, 95)


def _soak_targets(
    timed: Sequence[tuple[float, Sample]],
    statuses: Counter[str],
    metrics: Sequence[dict[str, float | None]],
    options: SoakOptions,
    schedule: Sequence[Segment],
    end: float,
) -> dict[str, object]:
    five_xx = _five_xx(statuses)
    slope = rss_slope_mib_per_min(metrics, options.warmup_s, end)
    first = _p95(timed, options.warmup_s, options.warmup_s + options.compare_s, schedule, options.settle_s)
    last = _p95(timed, options.duration_s - options.compare_s, options.duration_s, schedule, options.settle_s)
    drift = round(last / first, 3) if first and last else None
    return {
        "5xx": five_xx,
        "no_answer": statuses.get("no answer", 0),
        "rss_slope_mib_per_min_after_warmup": slope,
        "p95_after_warmup_s": first,
        "p95_at_end_s": last,
        "p95_end_over_start": drift,
        "met": {
            "no_5xx": five_xx == 0,
            "no_dropped_connection": statuses.get("no answer", 0) == 0,
            "rss_slope_le_1_mib_per_min": slope is not None and slope <= 1.0,
            "p95_drift_le_20pct": drift is not None and drift <= 1.2,
        },
    }


def _overload_targets(
    timed: Sequence[tuple[float, Sample]],
    statuses: Counter[str],
    metrics: Sequence[dict[str, float | None]],
    options: SoakOptions,
    deadline_s: float,
    queue_size: int,
) -> dict[str, object]:
    n, o = options.normal_s, options.overload_s
    during = [s for t, s in timed if n <= t < n + o]
    admitted = sorted(s.latency for s in during if s.status == 200)
    shed = [s for s in during if s.status == 429]
    normal = percentile(sorted(s.latency for t, s in timed if t < n and s.status == 200), 95)
    bound = 1.2 * normal if normal is not None else None
    recovered_after = None
    for second in range(int(options.normal_s)):  # requests started in each second after the overload
        t_lo = n + o + second
        window = sorted(s.latency for t, s in timed if t_lo <= t < t_lo + 1 and s.status == 200)
        p95 = percentile(window, 95)
        if bound is not None and p95 is not None and p95 <= bound:
            recovered_after = second + 1
            break
    depth = [d for m in metrics if (d := m["queue_depth"]) is not None]
    five_xx = _five_xx(statuses)
    p99 = percentile(admitted, 99)
    # the working set of a full queue (batch activations, request bodies) grows in the first
    # minutes; what must not grow is the plateau after it, as in the soak
    warm = min(options.warmup_s, o / 2)
    slope_all = rss_slope_mib_per_min(metrics, n, n + o)
    slope = rss_slope_mib_per_min(metrics, n + warm, n + o)
    without_retry = sum(1 for s in shed if s.retry_after is None)
    return {
        "offered_during_overload": f"{options.burst_load:g}x capacity for {o:g} s",
        "admitted_during_overload": len(admitted),
        "shed_429_during_overload": len(shed),
        "shed_without_retry_after": without_retry,
        "admitted_p99_s": p99,
        "request_deadline_s": deadline_s,
        "queue_depth_max": max(depth, default=None),
        "queue_size": queue_size,
        "rss_slope_mib_per_min_during_overload": slope_all,
        "rss_slope_mib_per_min_after_overload_warmup": slope,
        "overload_warmup_s": warm,
        "normal_p95_s": normal,
        "recovered_within_s": recovered_after,
        "5xx": five_xx,
        "no_answer": statuses.get("no answer", 0),
        "met": {
            "admitted_p99_under_deadline": p99 is not None and p99 <= deadline_s,
            "every_shed_429_has_retry_after": bool(shed) and without_retry == 0,
            "queue_within_bound": bool(depth) and max(depth) <= queue_size,
            "rss_slope_le_1_mib_per_min": slope is not None and slope <= 1.0,
            "recovered_within_target": recovered_after is not None
            and recovered_after <= options.recover_within_s,
            "no_5xx": five_xx == 0,
        },
    }


async def _capacity(url: str, tenant: Tenant, texts: list[str], options: SoakOptions) -> float:
    """Instances per second a closed loop of 32 clients gets answered (the busiest tenant's tasks)."""
    load = LoadOptions(
        concurrency=32, duration_s=options.capacity_probe_s, texts_per_request=options.texts_per_request
    )
    probe = LoadGenerator(
        url, tenant.tasks, texts, Zipf(len(tenant.tasks), options.zipf_s, 0), load, tenant.key
    )
    seconds = await probe.run()
    capacity = sum(s.inputs for s in probe.samples if s.status == 200) / seconds
    if capacity <= 0:
        raise LoadTestError("the capacity probe got no answers; is the server healthy?")
    return capacity


async def _run(
    url: str,
    tenants: list[Tenant],
    admin_key: str,
    files: list[MemoryFile],
    swaps: list[bytes],
    texts: list[str],
    options: SoakOptions,
    progress: Callable[[str], None],
) -> dict[str, object]:
    blobs = [f.to_bytes() for f in files]
    for tenant in tenants:
        async with AsyncSpartanClient(url, tenant.key, timeout=120) as c:
            for n, task in enumerate(tenant.tasks):
                await c.put_memory(task, blobs[n % len(blobs)])
    capacity = await _capacity(url, tenants[0], texts, options)
    schedule = soak_schedule(options) if options.kind == "soak" else overload_schedule(options)
    end = max(s.start_s + s.duration_s for s in schedule)
    progress(
        f"capacity {60 * capacity:.0f} inst/min; {options.kind} of {end:g} s in {len(schedule)} segments"
    )
    t0 = time.monotonic()
    until = t0 + end
    metrics: list[dict[str, float | None]] = []
    background = Background()
    jobs = [asyncio.create_task(_sample_metrics(url, admin_key, options.sample_every_s, t0, metrics))]
    if options.kind == "soak":
        jobs.append(
            asyncio.create_task(
                _hot_swaps(url, tenants[0], swaps, options.hot_swap_every_s, until, background, t0)
            )
        )
        jobs.append(
            asyncio.create_task(_churn(url, tenants, blobs[0], texts[0], options, until, background, t0))
        )
    reporter = asyncio.create_task(_report_progress(t0, end, metrics, progress))
    parts = await asyncio.gather(
        *(
            _segment(url, tenants, texts, options, capacity, seg, t0, options.seed + 100 * i)
            for i, seg in enumerate(schedule)
        )
    )
    for job in (*jobs, reporter):
        job.cancel()
    await asyncio.gather(*jobs, reporter, return_exceptions=True)
    async with AsyncSpartanClient(url, admin_key, timeout=30) as client:
        admission = admission_by_tenant(scrape(await client.metrics()))
    timed = sorted((item for part in parts for item in part), key=lambda item: item[0])
    finished = max((t + s.latency for t, s in timed), default=end)
    statuses = Counter(_status(s) for _, s in timed)
    report: dict[str, object] = {
        "capacity_inst_per_min": round(60 * capacity, 1),
        "schedule": [asdict(s) for s in schedule],
        "requests": len(timed),
        "statuses": dict(sorted(statuses.items())),
        "latency_s": latency_summary(sorted(s.latency for _, s in timed if s.status == 200)),
        "registry_jobs": {
            "hot_swaps": background.hot_swaps,
            "uploads": background.uploads,
            "deletes": background.deletes,
            "errors": dict(background.errors),
            "failures": background.events[:50],
        },
        "timeline": _windows(timed, metrics, options.sample_every_s, finished),
        "admission": admission,
        "metrics_samples": metrics,
    }
    if options.kind == "soak":
        report["targets"] = _soak_targets(timed, statuses, metrics, options, schedule, end)
    else:
        settings = dict(options.server_settings)
        deadline = float(settings.get("request_timeout_s", DEFAULTS["request_timeout_s"]))
        queue = int(settings.get("queue_size", DEFAULTS["queue_size"]))
        report["targets"] = _overload_targets(timed, statuses, metrics, options, deadline, queue)
    return report


def admission_by_tenant(metrics: dict[str, float]) -> dict[str, object]:
    """The server's view of its admission, per tenant: admitted requests, the late ones (504), and
    the mean expected wait against the mean wait that followed (``spartan_tenant_admission_*``)."""
    tenants = sorted(
        name.split("tenant=", 1)[1].rstrip("}")
        for name in metrics
        if name.startswith("spartan_tenant_admitted_requests_total{")
    )

    def value(name: str, tenant: str) -> float:
        return metrics.get(f"spartan_tenant_{name}_total{{tenant={tenant}}}", 0.0)

    def mean(total: str, count: str, tenant: str) -> float | None:
        n = value(count, tenant)
        return round(value(total, tenant) / n, 3) if n else None

    by_tenant = {
        tenant: {
            "admitted": int(value("admitted_requests", tenant)),
            "late": int(value("admitted_late_requests", tenant)),
            "mean_left_s": mean("admission_left_seconds", "admitted_requests", tenant),
            "mean_estimate_s": mean("admission_estimate_seconds", "admitted_requests", tenant),
            "mean_wait_s": mean("admission_wait_seconds", "admitted_requests", tenant),
            "late_mean_left_s": mean("admission_late_left_seconds", "admitted_late_requests", tenant),
            "late_mean_estimate_s": mean("admission_late_estimate_seconds", "admitted_late_requests", tenant),
        }
        for tenant in tenants
    }
    put_back = int(metrics.get("spartan_engine_put_back_rows_total", 0.0))
    margin = metrics.get("spartan_engine_admission_margin")
    return {"tenants": by_tenant, "put_back_rows": put_back, "margin": margin}


async def _report_progress(
    t0: float, end: float, metrics: list[dict[str, float | None]], progress: Callable[[str], None]
) -> None:
    while True:
        await asyncio.sleep(30)
        last = metrics[-1] if metrics else {}
        rss, queue = last.get("rss_bytes") or 0.0, last.get("queue_depth") or 0.0
        progress(
            f"[{time.monotonic() - t0:5.0f} / {end:.0f} s] server RSS {rss / MIB:.0f} MiB, queue {queue:.0f}"
        )


DEFAULTS = {"threads": "1", "precision": "fp32", "queue_size": "256", "request_timeout_s": "10"}
"""Server settings of a soak or overload unless ``server_settings`` says otherwise: one torch thread,
fp32 (a bf16 server outruns what one load-generator process can offer at 2x), a queue of 256 texts
and a 10 s deadline, so that shedding and the deadline are reached within the run."""


def run_soak(
    options: SoakOptions, command: str, progress: Callable[[str], None] = print
) -> dict[str, object]:
    """Start the server, run the soak or the overload, and return the report (with its targets)."""
    texts = load_texts(options.data, options.texts)
    backbone = load_backbone(options.backbone)
    files = random_memories(backbone, 4, options.seed, "soak", options.max_seq_length)
    swaps = [
        f.to_bytes()
        for f in random_memories(backbone, 2, options.seed + 1, "soak-swap", options.max_seq_length)
    ]
    memory_bytes = files[0].to_packed().nbytes()
    total = options.tenants * options.tasks_per_tenant
    weights = [1.0 / (k + 1) ** options.zipf_s for k in range(options.tenants)]  # tenants' shares: Zipf too
    with tempfile.TemporaryDirectory(prefix=f"spartan-{options.kind}-") as tmp:
        keys_file = Path(tmp) / "keys.json"
        tenants = [
            Tenant(
                f"t{i}",
                add_key(keys_file, f"t{i}", "tenant"),
                weights[i] / sum(weights),
                [f"task-{j}" for j in range(options.tasks_per_tenant)],
            )
            for i in range(options.tenants)
        ]
        admin = add_key(keys_file, "ops", "admin")
        settings = {
            **DEFAULTS,
            "backbone": options.backbone,
            "registry_dir": str(Path(tmp) / "registry"),
            "api_keys_file": str(keys_file),
            "cache_bytes": str(max(MIB, memory_bytes * total // 2)),
            **dict(options.server_settings),
        }
        limits = Limits(cpuset=options.server_cpuset) if options.server_cpuset else None
        progress(
            f"starting spartan serve ({options.backbone}): "
            f"{options.tenants} tenants x {options.tasks_per_tenant} tasks"
        )
        server = start_server(settings, Path(tmp) / "server.log", limits=limits)
        try:
            report = asyncio.run(_run(server.url, tenants, admin, files, swaps, texts, options, progress))
        finally:
            exit_reason = server.exit_reason()
            server.stop()
    shown = {k: v for k, v in settings.items() if k not in ("api_keys_file", "registry_dir")}
    return report | {
        "kind": options.kind,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        "server_settings": shown,
        "server_exit": exit_reason,
        "memory_bytes": memory_bytes,
        "command": command,
        "machine": machine(),
    }


def plot_soak(report: dict[str, object], path: Path) -> None:
    """Throughput, latency percentiles and RSS / queue depth over time, bursts shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["timeline"]
    assert isinstance(rows, list)
    ts = [r["t_end"] / 60 for r in rows]
    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    schedule = report["schedule"]
    assert isinstance(schedule, list)
    for axis in (top, middle, bottom):
        for seg in schedule:
            if seg["burst"]:
                axis.axvspan(
                    seg["start_s"] / 60, (seg["start_s"] + seg["duration_s"]) / 60, color="orange", alpha=0.2
                )
    top.plot(ts, [r["inst_per_min"] for r in rows], label="answered inst/min")
    shed = [r["statuses"].get("429", 0) * 60 / (rows[0]["t_end"] or 1) for r in rows]
    if any(shed):
        top.plot(ts, shed, label="shed (429 req/min)")
    top.axhline(float(report["capacity_inst_per_min"]), color="k", linestyle=":", label="capacity")  # type: ignore[arg-type]
    top.set(ylabel="per minute", title="throughput (bursts shaded)")
    top.legend(fontsize=8)
    for name, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
        middle.plot(ts, [r["latency_s"][name] or float("nan") for r in rows], style, label=name)
    middle.set(ylabel="seconds", yscale="log", title="latency of answered requests, per window")
    middle.legend(fontsize=8)
    bottom.plot(
        ts,
        [r["rss_mib"] if r["rss_mib"] is not None else float("nan") for r in rows],
        label="server RSS (MiB)",
    )
    bottom.set(xlabel="minutes", ylabel="MiB", title="server memory and queue")
    queue = bottom.twinx()
    queue.plot(
        ts,
        [r["queue_depth"] if r["queue_depth"] is not None else float("nan") for r in rows],
        color="g",
        alpha=0.6,
        label="queue depth (texts)",
    )
    queue.set(ylabel="texts queued")
    bottom.legend(loc="upper left", fontsize=8)
    queue.legend(loc="upper right", fontsize=8)
    host = report["machine"]
    assert isinstance(host, dict)
    figure.suptitle(f"spartan loadtest {report['kind']} on {host['cpu']}")
    figure.tight_layout()
    write_figure(figure, path, dpi=100)
    plt.close(figure)
