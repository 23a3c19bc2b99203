"""Prometheus metrics: HTTP traffic, tenants' usage, cache, engine and registry health, one registry per app.

HTTP counters are recorded by :class:`HTTPMetrics` (a pure ASGI middleware, labelled by route
template, never by raw path). Cache and engine numbers are read from their stats objects at
scrape time by :class:`RuntimeCollector`, so the hot paths only bump plain integers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.admission import AdmissionStats
from service.cache import LOAD_BUCKETS
from service.memlimit import resident_bytes
from service.rollouts import TrialStats
from service.runtime import Runtime
from service.tasks import TaskRef
from service.usage import LATENCY_BUCKETS, UsageMeter


class RuntimeCollector(Collector):
    """Cache, engine and registry state of one runtime, read at scrape time."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        now = self.runtime.snapshot()
        stats, engine = now.cache, now.engine
        for name, value, doc in (
            ("cache_hits", stats.hits, "classify lookups served from the cache"),
            ("cache_misses", stats.misses, "lookups that had to load (or wait for) a memory"),
            ("cache_evictions", stats.evictions, "memories evicted to stay within the byte budget"),
            ("cache_loads", stats.loads, "memories loaded from the registry"),
            ("cache_load_failures", stats.load_failures, "loads that failed"),
            ("cache_load_seconds", stats.load_seconds, "time spent loading memories"),
            ("engine_batches", engine.batches, "batches run by the engine"),
            ("engine_rows", engine.rows, "inputs classified by the engine"),
            ("engine_expired_rows", engine.expired, "inputs dropped because their deadline passed"),
            (
                "engine_refused_late_requests",
                engine.refused_late,
                "requests refused at admission: the queue could not serve them before their deadline",
            ),
            ("engine_failed_rows", engine.failed, "inputs that failed in the engine"),
            ("engine_busy_seconds", engine.busy_seconds, "time the engine spent running batches"),
            ("engine_tokens", engine.tokens, "real tokens run through the backbone"),
            ("engine_padded_tokens", engine.padded_tokens, "token slots run, padding included"),
            ("engine_early_exit_rows", engine.exited_early, "inputs that left the backbone at an early exit"),
            ("engine_heap_trims", engine.heap_trims, "times the idle engine gave freed heap pages back"),
            (
                "engine_put_back_rows",
                engine.put_back,
                "rows a round handed back to the queue so another tenant's rows ran first",
            ),
            (
                "unknown_task_hits",
                now.unknown_hits,
                "requests for unknown task ids answered without the registry",
            ),
        ):
            yield CounterMetricFamily(f"spartan_{name}", doc, value=value)
        for name, value, doc in (
            ("cache_resident_bytes", now.cache_resident_bytes, "bytes of memories held by the cache"),
            ("cache_capacity_bytes", now.cache_capacity_bytes, "byte budget of the cache"),
            ("cache_resident_tasks", now.cache_resident_tasks, "memories held by the cache"),
            ("engine_queue_depth", now.engine_queue_depth, "inputs admitted and waiting for the engine"),
            (
                "engine_admission_margin",
                now.admission_margin,
                "factor on admission's expected waits: the high quantile of wait / estimate lately",
            ),
            ("catalog_tasks", now.catalog_tasks, "tasks known to this replica"),
            ("unknown_task_ids", now.unknown_ids, "task ids remembered as unknown (negative cache)"),
            ("registry_up", int(now.registry_up), "1 when the registry answers"),
            ("process_resident_bytes", resident_bytes(), "resident set of this process (RSS)"),
        ):
            yield GaugeMetricFamily(f"spartan_{name}", doc, value=value)
        info = GaugeMetricFamily(
            "spartan_precision_info",
            "the backbone's precision mode and the setting that chose it",
            labels=["mode", "setting"],
        )
        info.add_metric([now.precision.mode, now.precision.setting], 1)
        yield info
        routing = GaugeMetricFamily(
            "spartan_memory_routing_info",
            "how the SPARTAN op routes: fused (one compiled kernel, memories.fused) or eager",
            labels=["routing"],
        )
        routing.add_metric([now.precision.routing.split(" ", 1)[0]], 1)
        yield routing
        decision = now.precision.decision
        yield GaugeMetricFamily(
            "spartan_precision_decision_seconds",
            "start-up time precision auto spent measuring (0 when a mode was set)",
            value=decision.seconds if decision is not None else 0.0,
        )
        cumulative = [(str(b), n) for b, n in zip(LOAD_BUCKETS, stats.load_histogram, strict=True)]
        yield HistogramMetricFamily(
            "spartan_cache_load_duration_seconds",
            "time to load one memory (registry read, parse, validate, pack)",
            buckets=[*cumulative, ("+Inf", stats.loads)],
            sum_value=stats.load_seconds,
        )
        sizes = dict(engine.batch_sizes)
        bounds = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
        buckets = [(str(b), sum(n for size, n in sizes.items() if size <= b)) for b in bounds]
        buckets.append(("+Inf", sum(sizes.values())))
        total_rows = sum(size * n for size, n in sizes.items())
        yield HistogramMetricFamily(
            "spartan_engine_batch_size", "rows per engine batch", buckets=buckets, sum_value=total_rows
        )
        yield from _admissions(now.admissions)
        yield from _usage(now.usage)
        yield from _trials(now.trials)


def _admissions(admissions: dict[str, AdmissionStats]) -> Iterator[Metric]:
    """Per tenant: admitted requests (those with an estimate), the late ones, and the summed
    seconds admission expected them to wait against what they waited (service.engine)."""
    fields = (
        ("admitted", "admitted_requests", "requests admitted with an expected wait"),
        ("late", "admitted_late_requests", "admitted requests not answered before their deadline"),
        ("left_seconds", "admission_left_seconds", "summed time to the deadline at admission"),
        ("estimate_seconds", "admission_estimate_seconds", "summed wait expected at admission"),
        ("wait_seconds", "admission_wait_seconds", "summed wait from admission to the answer"),
        ("late_estimate_seconds", "admission_late_estimate_seconds", "expected wait of the late ones"),
        ("late_left_seconds", "admission_late_left_seconds", "time to the deadline of the late ones"),
    )
    yield from _per_tenant(fields, admissions)


def _per_tenant(fields: Sequence[tuple[str, str, str]], by_tenant: Mapping[str, object]) -> Iterator[Metric]:
    """One ``spartan_tenant_<name>`` counter per (attribute, name, doc), a sample per tenant."""
    for attribute, name, doc in fields:
        family = CounterMetricFamily(f"spartan_tenant_{name}", f"{doc}, per tenant", labels=["tenant"])
        for tenant, numbers in sorted(by_tenant.items()):
            family.add_metric([tenant], getattr(numbers, attribute))
        yield family


def _trials(trials: dict[TaskRef, TrialStats]) -> Iterator[Metric]:
    """Per task with a candidate on trial (canary or shadow): requests and latency per version
    and way (served, scored in the background), and the agreement counts (service.rollouts)."""
    labels = ["tenant", "task", "candidate"]
    requests = CounterMetricFamily(
        "spartan_trial_requests", "trial requests per version and way", labels=[*labels, "version", "way"]
    )
    seconds = CounterMetricFamily(
        "spartan_trial_latency_seconds", "their summed latency", labels=[*labels, "version", "way"]
    )
    compared = CounterMetricFamily(
        "spartan_trial_compared_rows", "rows scored by both versions", labels=labels
    )
    agreeing = CounterMetricFamily(
        "spartan_trial_agreeing_rows", "compared rows with the same label", labels=labels
    )
    difference = CounterMetricFamily(
        "spartan_trial_difference",
        "summed mean absolute probability difference of compared rows (regression: value)",
        labels=labels,
    )
    skipped = CounterMetricFamily(
        "spartan_trial_skipped", "comparisons skipped (too many in flight)", labels=labels
    )
    for ref, trial in sorted(trials.items()):
        key = [ref.tenant, ref.task, str(trial.candidate)]
        for way, arms in (("served", trial.served), ("scored", trial.scored)):
            for arm, numbers in arms.items():
                requests.add_metric([*key, arm, way], numbers.requests)
                seconds.add_metric([*key, arm, way], numbers.latency_seconds)
        compared.add_metric(key, trial.compared_rows)
        agreeing.add_metric(key, trial.agreeing_rows)
        difference.add_metric(key, trial.difference_sum)
        skipped.add_metric(key, trial.skipped)
    yield from (requests, seconds, compared, agreeing, difference, skipped)


def _usage(usage: UsageMeter) -> Iterator[Metric]:
    """Per tenant: requests, texts, tokens, 429s, errors and latency; the same counts per task."""
    fields = (
        ("requests", "classify requests"),
        ("rows", "texts classified"),
        ("tokens", "real tokens classified"),
        ("rejected", "classify requests refused with 429 (rate quota, queue share, full queue)"),
        ("errors", "classify requests that failed otherwise"),
    )
    yield from _per_tenant([(name, name, doc) for name, doc in fields], usage.tenants)
    for name, doc in fields:
        family = CounterMetricFamily(
            f"spartan_task_{name}",
            f"{doc}, per task (capped: later tasks sum as _other)",
            labels=["tenant", "task"],
        )
        for (tenant, task), task_counts in sorted(usage.tasks.items()):
            family.add_metric([tenant, task], getattr(task_counts, name))
        yield family
    latency = HistogramMetricFamily(
        "spartan_tenant_latency_seconds",
        "latency of answered classify requests, per tenant",
        labels=["tenant"],
    )
    for tenant, counts in sorted(usage.tenants.items()):
        answered = counts.requests - counts.rejected - counts.errors
        buckets = [(str(b), n) for b, n in zip(LATENCY_BUCKETS, counts.latency_histogram, strict=True)]
        latency.add_metric([tenant], [*buckets, ("+Inf", answered)], counts.latency_sum)
    yield latency


class HTTPMetrics:
    """Counts requests and their latency by method, route template and status."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "spartan_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "spartan_http_request_seconds",
            "HTTP request latency",
            ["route"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.requests.labels(scope["method"], template, str(status)).inc()
            self.latency.labels(template).observe(time.perf_counter() - started)
