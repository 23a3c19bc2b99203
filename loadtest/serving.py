"""Serving numbers, measured against real ``spartan serve`` processes on loopback.

Four measurements (``spartan loadtest serving --measure ...``), each a section of one report:

* ``cold``: tasks are uploaded through replica A; replica B, sharing the registry, has never
  seen them, so its first request per task is cold (registry read, parse, validation, packing,
  then the forward pass); right after, the same request again is the warm reference. Per
  registry (file, Redis): latency percentiles of cold, warm and the paired difference (the
  load's own cost, plus the noise of two forward passes); B's own counters confirm one load per
  task and give the time its cache spent loading (registry read, parse, validate, pack): the
  mean, and the p95 as the bound of the load-duration histogram bucket that holds it.
* ``swap``: two replicas share a registry; a new version is PUT on A. Propagation = from A's
  PUT response until B's catalog names the new version (``GET /v1/memories/<task>`` on B, asked
  back to back: a millisecond's resolution). Then B classifies once: the first answer with the
  new version (its cold load and the forward pass included) is reported too.
* ``density``: resident bytes per task in the cache for fp32 and fp16 memory files, tasks per
  GiB of cache, and the server's RSS growth per resident task (what the OS really pays).
* ``sweep``: every one of N tasks is asked once through a small cache; the server's RSS is
  sampled as it goes and must stay bounded (the cache evicts, nothing else accumulates).

Memories are random (untrained) with the backbone's real shape: the numbers are about bytes and
time, not accuracy.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.errors import LoadTestError
from loadtest.launcher import ServerProcess, drop_redis_prefixes, start_server
from loadtest.report import percentile, scrape
from loadtest.run import upload_memories
from loadtest.synthetic import random_memories
from memories.backbone import Backbone
from memories.memfile import FileDType
from service.client import AsyncSpartanClient

MEASUREMENTS = ("cold", "swap", "density", "sweep")
REGISTRIES = ("file", "redis")
TEXT = "a quiet, clever film with a warm heart"
GIB = 1024**3


@dataclass(frozen=True)
class ServingOptions:
    backbone: str = "roberta-base-random"
    measurements: tuple[str, ...] = MEASUREMENTS
    registries: tuple[str, ...] = REGISTRIES
    memory_dtype: FileDType = "float16"
    cold_tasks: int = 40
    swaps: int = 40
    density_tasks: int = 100
    sweep_tasks: int = 1000
    sweep_cache_mb: int = 64
    sample_every: int = 50
    redis_url: str = "redis://127.0.0.1:6379/0"
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.measurements) - set(MEASUREMENTS)) + sorted(
            set(self.registries) - set(REGISTRIES)
        )
        if unknown or not self.measurements or not self.registries:
            raise LoadTestError(
                f"unknown or missing measurements/registries {unknown}; "
                f"choose from {', '.join(MEASUREMENTS)} and {', '.join(REGISTRIES)}"
            )
        counts = (self.cold_tasks, self.swaps, self.density_tasks, self.sweep_tasks, self.sample_every)
        if min(counts) < 2:
            raise LoadTestError("task, swap and sample counts must be at least 2")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise LoadTestError(f"process {pid} reports no VmRSS")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 1)


def latency_summary(values: list[float]) -> dict[str, float]:
    """p50 / p95 / max in milliseconds."""
    ordered = sorted(values)
    assert ordered, "no values to summarise"
    summary = {f"p{q}_ms": round(1000 * (percentile(ordered, q) or 0.0), 2) for q in (50, 95)}
    return {**summary, "max_ms": round(1000 * ordered[-1], 2)}


class _Servers:
    """Servers started for one measurement, each on its own registry settings; all stopped at exit."""

    def __init__(self, options: ServingOptions, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.running: list[ServerProcess] = []
        self.redis_prefixes: list[str] = []

    def registry_settings(self, registry: str) -> dict[str, str]:
        """A fresh, empty registry: a new directory, or a new Redis key prefix."""
        name = f"perf-{secrets.token_hex(4)}"
        if registry == "file":
            return {"registry": "file", "registry_dir": str(self.workdir / name)}
        self.redis_prefixes.append(name)
        return {"registry": "redis", "redis_url": self.options.redis_url, "redis_prefix": name}

    def start(self, registry: dict[str, str], cache_bytes: int, name: str) -> ServerProcess:
        settings = {
            **registry,
            "backbone": self.options.backbone,
            "threads": str(self.options.threads),
            "cache_bytes": str(cache_bytes),
            "resident_dtype": "auto",
            # these measure the cache and the registries, not precision: with auto, a bf16 choice
            # would keep fp32 and fp16 files alike in bf16 on some hosts and not on others
            "precision": "fp32",
            "max_wait_ms": "0",
        }
        server = start_server(settings, self.workdir / f"{name}.log", ready_timeout=600)
        self.running.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.running:
            server.stop()
        self.running.clear()


@contextmanager
def _servers(options: ServingOptions) -> Iterator[_Servers]:
    with tempfile.TemporaryDirectory(prefix="spartan-serving-") as workdir:
        servers = _Servers(options, Path(workdir))
        try:
            yield servers
        finally:
            servers.stop_all()
            drop_redis_prefixes(options.redis_url, servers.redis_prefixes)


def memory_blobs(
    backbone: Backbone, count: int, seed: int, dtypes: Sequence[FileDType]
) -> dict[FileDType, list[bytes]]:
    """``count`` distinct random memories as file bytes in each of ``dtypes``; each memory is made
    once and dropped after serialising (a RoBERTa-base memory is 6.5 MB in fp32 as a module)."""
    blobs: dict[FileDType, list[bytes]] = {dtype: [] for dtype in dtypes}
    for i in range(count):
        memfile = random_memories(backbone, 1, seed + i)[0]
        for dtype in dtypes:
            blobs[dtype].append(memfile.to_bytes(dtype))
    return blobs


async def _upload(client: AsyncSpartanClient, blobs: list[bytes], prefix: str) -> list[str]:
    tasks = [f"{prefix}-{i}" for i in range(len(blobs))]
    await upload_memories(client, tasks, blobs)
    return tasks


async def _timed_classify(client: AsyncSpartanClient, task: str) -> tuple[float, int]:
    started = time.perf_counter()
    response = await client.classify(task, [TEXT])
    return time.perf_counter() - started, response.version


def _counter(metrics: str, name: str) -> float:
    return scrape(metrics).get(name, 0.0)


def histogram_quantile_bound(before: str, after: str, name: str, q: float) -> float | None:
    """The smallest bucket bound under which at least fraction ``q`` of the observations made
    between two scrapes fall (None without observations or when only +Inf holds them)."""
    start, end = scrape(before), scrape(after)
    total = end.get(f"{name}_count", 0.0) - start.get(f"{name}_count", 0.0)
    if total <= 0:
        return None
    bounds = []
    for key, value in end.items():
        if key.startswith(f"{name}_bucket{{le=") and not key.endswith("le=+Inf}"):
            bound = float(key[len(name) + len("_bucket{le=") : -1])
            bounds.append((bound, value - start.get(key, 0.0)))
    return next((bound for bound, count in sorted(bounds) if count >= q * total), None)


async def _cold(
    writer: ServerProcess, reader: ServerProcess, blobs: list[bytes], progress: Callable[[str], None]
) -> dict[str, object]:
    async with AsyncSpartanClient(writer.url) as a:
        tasks = await _upload(a, blobs, "cold")
    async with AsyncSpartanClient(reader.url) as client:
        before = await client.metrics()
        cold, warm = [], []
        for i, task in enumerate(tasks):
            cold.append((await _timed_classify(client, task))[0])
            warm.append((await _timed_classify(client, task))[0])
            if (i + 1) % 10 == 0:
                progress(f"cold: {i + 1}/{len(tasks)} tasks")
        after = await client.metrics()
    loads = _counter(after, "spartan_cache_loads_total") - _counter(before, "spartan_cache_loads_total")
    seconds = _counter(after, "spartan_cache_load_seconds_total") - _counter(
        before, "spartan_cache_load_seconds_total"
    )
    return {
        "tasks": len(tasks),
        "cache_loads": int(loads),
        "server_load_mean_ms": round(1000 * seconds / loads, 2) if loads else None,
        "server_load_p95_at_most_ms": _ms(
            histogram_quantile_bound(before, after, "spartan_cache_load_duration_seconds", 0.95)
        ),
        "cold": latency_summary(cold),
        "warm": latency_summary(warm),
        "load_cost": latency_summary([c - w for c, w in zip(cold, warm, strict=True)]),
    }


async def _swap(
    writer: ServerProcess, reader: ServerProcess, blobs: list[bytes], progress: Callable[[str], None]
) -> dict[str, object]:
    async with AsyncSpartanClient(writer.url) as a, AsyncSpartanClient(reader.url) as b:
        info = await a.put_memory("swap", blobs[0])
        await b.classify("swap", [TEXT])  # B finds a new task in the registry at once
        propagation, first_answer, answer = [], [], []
        for i in range(1, len(blobs)):
            info = await a.put_memory("swap", blobs[i], if_match=info.version)
            committed = time.perf_counter()
            while (await b.get_memory("swap")).version != info.version:  # B's catalog, a cheap call
                if time.perf_counter() - committed > 30:
                    raise LoadTestError(f"replica B did not see version {info.version} within 30 s")
            propagation.append(time.perf_counter() - committed)
            latency, version = await _timed_classify(b, "swap")
            if version != info.version:
                raise LoadTestError(f"replica B knew version {info.version} but answered with {version}")
            answer.append(latency)
            first_answer.append(time.perf_counter() - committed)
            if i % 10 == 0:
                progress(f"swap: {i}/{len(blobs) - 1} versions")
    return {
        "swaps": len(propagation),
        "propagation": latency_summary(propagation),
        "first_answer_with_new_version": latency_summary(first_answer),
        "that_answer_alone": latency_summary(answer),
    }


async def _density(
    server: ServerProcess, blobs: dict[FileDType, list[bytes]], progress: Callable[[str], None]
) -> dict[str, object]:
    report: dict[str, object] = {}
    async with AsyncSpartanClient(server.url) as client:
        for dtype, group in blobs.items():
            before_rss = rss_bytes(server.process.pid)
            before = _counter(await client.metrics(), "spartan_cache_resident_bytes")
            tasks = await _upload(client, group, f"density-{dtype}")
            for task in tasks:  # every upload is resident already; one request each proves it serves
                await client.classify(task, [TEXT])
            after = _counter(await client.metrics(), "spartan_cache_resident_bytes")
            rss = rss_bytes(server.process.pid)
            per_task = (after - before) / len(tasks)
            report[dtype] = {
                "tasks": len(tasks),
                "file_bytes": len(group[0]),
                "resident_bytes_per_task": int(per_task),
                "tasks_per_gib_of_cache": int(GIB // per_task),
                "rss_growth_bytes_per_task": int((rss - before_rss) / len(tasks)),
                "tasks_per_gib_of_rss": int(GIB // max(1.0, (rss - before_rss) / len(tasks))),
            }
            progress(f"density: {dtype} {report[dtype]}")
    return report


async def _sweep(
    server: ServerProcess,
    make: Callable[[int, int], list[bytes]],
    total: int,
    every: int,
    progress: Callable[[str], None],
) -> dict[str, object]:
    """``make(start, count)`` gives the files of tasks start..start+count-1 (made per chunk, so
    the client never holds all of them)."""
    samples = [{"tasks": 0, "rss_bytes": rss_bytes(server.process.pid)}]
    async with AsyncSpartanClient(server.url) as client:
        for start in range(0, total, every):
            chunk = make(start, min(every, total - start))
            tasks = await _upload(client, chunk, f"sweep-{start}")
            for task in tasks:
                await client.classify(task, [TEXT])
            samples.append({"tasks": start + len(chunk), "rss_bytes": rss_bytes(server.process.pid)})
            progress(f"sweep: {start + len(chunk)}/{total} tasks, RSS {samples[-1]['rss_bytes'] >> 20} MiB")
        metrics = await client.metrics()
    rss = [s["rss_bytes"] for s in samples]
    half = rss[len(rss) // 2 :]
    return {
        "tasks": total,
        "samples": samples,
        "rss_first_mib": rss[0] >> 20,
        "rss_max_mib": max(rss) >> 20,
        "rss_second_half_spread_mib": (max(half) - min(half)) >> 20,
        "cache_resident_bytes": int(_counter(metrics, "spartan_cache_resident_bytes")),
        "cache_evictions": int(_counter(metrics, "spartan_cache_evictions_total")),
    }


PairRun = Callable[
    [ServerProcess, ServerProcess, list[bytes], Callable[[str], None]], Coroutine[Any, Any, dict[str, object]]
]


def _on_two_replicas(
    options: ServingOptions, name: str, run: PairRun, blobs: list[bytes], progress: Callable[[str], None]
) -> dict[str, object]:
    """``run(A, B, blobs)`` once per registry, on two fresh replicas sharing a fresh registry."""
    results: dict[str, object] = {}
    for registry in options.registries:
        with _servers(options) as servers:
            shared = servers.registry_settings(registry)
            writer = servers.start(shared, 256 * 1024 * 1024, f"{name}-a-{registry}")
            reader = servers.start(shared, 256 * 1024 * 1024, f"{name}-b-{registry}")
            progress(f"{name}: {registry} registry shared by replicas A and B, {len(blobs)} memories")
            results[registry] = asyncio.run(run(writer, reader, blobs, progress))
    return results


def run_serving(
    backbone: Backbone, options: ServingOptions, progress: Callable[[str], None] = print
) -> dict[str, object]:
    """Run the chosen measurements; returns the JSON-ready report (without command and machine)."""
    dtype = options.memory_dtype
    both: tuple[FileDType, ...] = ("float32", "float16")
    report: dict[str, object] = {"backbone": options.backbone, "memory_dtype": dtype}
    report["memory_file_bytes"] = {
        d: len(b[0]) for d, b in memory_blobs(backbone, 1, options.seed, both).items()
    }
    if "cold" in options.measurements:
        blobs = memory_blobs(backbone, options.cold_tasks, options.seed, (dtype,))[dtype]
        report["cold"] = _on_two_replicas(options, "cold", _cold, blobs, progress)
    if "swap" in options.measurements:
        blobs = memory_blobs(backbone, options.swaps + 1, options.seed, (dtype,))[dtype]
        report["swap"] = _on_two_replicas(options, "swap", _swap, blobs, progress)
    if "density" in options.measurements:
        by_dtype = memory_blobs(backbone, options.density_tasks, options.seed, both)
        with _servers(options) as servers:
            server = servers.start(servers.registry_settings("file"), 4 * GIB, "density")
            report["density"] = asyncio.run(_density(server, by_dtype, progress))
    if "sweep" in options.measurements:

        def make(start: int, count: int) -> list[bytes]:
            return memory_blobs(backbone, count, options.seed + start, (dtype,))[dtype]

        with _servers(options) as servers:
            cache = options.sweep_cache_mb * 1024 * 1024
            server = servers.start(servers.registry_settings("file"), cache, "sweep")
            total = options.sweep_tasks
            progress(f"sweep: {total} tasks through a {options.sweep_cache_mb} MiB cache")
            sweep = asyncio.run(_sweep(server, make, total, options.sample_every, progress))
            sweep["cache_mib"] = options.sweep_cache_mb
            report["sweep"] = sweep
    return report
