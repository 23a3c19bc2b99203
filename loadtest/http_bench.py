"""Serving overhead: the engine driven in-process vs the same engine behind HTTP, one run.

Both sides get the same work, on the backbone in one precision mode: ``requests`` requests of
``texts_per_request`` texts spread round-robin over ``tasks`` different memories (so batches mix
tasks), ``concurrency`` in flight at a time (enough to keep batches full), engine batches of up
to ``max_batch_size`` and ``threads`` torch threads.

* in-process: an :class:`~service.engine.Engine` in this process, fed by asyncio tasks;
* HTTP: a real ``spartan serve`` child process on a loopback port (loadtest.launcher; file
  registry in a temp dir, the memories uploaded through the API), fed by the async client.

Rounds alternate the two sides; the reported ratio is the median of per-round ratios
(HTTP inst/min over in-process inst/min), which cancels slow drifts of a shared machine.

``pin`` puts the engine (in-process) and the whole server process on one CPU and the load
generator on the others. Without it, on a small machine the load generator and the server's
event loop steal CPU from the engine's GEMMs, which measures the machine, not the serving stack.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from loadtest.launcher import start_server
from loadtest.synthetic import random_memories
from memories.backbone import Backbone
from memories.errors import ConfigError
from memories.lab.host import machine
from memories.precision import PRECISIONS, set_precision
from service.cache import LoadedMemory
from service.client import AsyncSpartanClient
from service.engine import Engine, RowRequest
from service.tasks import DEFAULT_TENANT, TaskRef


@dataclass(frozen=True)
class HttpBenchOptions:
    tasks: int = 8
    requests: int = 512
    concurrency: int = 64
    rounds: int = 3
    threads: int = 1
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    seed: int = 0
    pin: bool = False  # engine (in-process) and server on CPU 0, load generator on the other CPUs
    texts_per_request: int = 1
    precision: str = "fp32"  # both sides run the backbone in this mode (memories.precision)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not 1 <= self.texts_per_request <= 64:
            raise ConfigError(
                f"texts_per_request must be 1-64 (the server's max_inputs), got {self.texts_per_request}"
            )


def _texts(count: int) -> list[str]:
    """Deterministic sentences of 12-30 words (SST-2-like lengths)."""
    words = ["the", "a", "film", "story", "plot", "actor", "scene", "music"]
    words += ["quietly", "bold", "warm", "dull", "bright", "clever", "slow"]
    return [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12 + i % 19)) for i in range(count)]


async def _drive(send: Callable[[int], Awaitable[None]], requests: int, concurrency: int) -> float:
    """Run ``requests`` calls of ``send(i)`` with ``concurrency`` in flight; returns seconds."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await send(i)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    return time.perf_counter() - started


def _cpu_split(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, client CPUs) when pinning: the first available CPU serves, the rest load."""
    if not pin:
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise ConfigError("--pin needs at least 2 CPUs: one for the server, one for the load generator")
    return {cpus[0]}, set(cpus[1:])


def run_http_bench(
    backbone: Backbone, options: HttpBenchOptions, progress: Callable[[str], None] = print
) -> dict[str, object]:
    files = random_memories(backbone, options.tasks, options.seed)
    set_precision(backbone, options.precision)
    per = options.texts_per_request
    texts = _texts(options.requests * per)
    loaded = []
    for i, memfile in enumerate(files):
        packed = memfile.to_packed("auto", backbone.dtype)  # as the server keeps them
        loaded.append(
            LoadedMemory(TaskRef(DEFAULT_TENANT, f"bench-{i}"), 1, memfile.metadata, packed, packed.nbytes())
        )
    server_cpus, client_cpus = _cpu_split(options.pin)
    engine = Engine(
        backbone,
        options.max_batch_size,
        options.max_wait_ms / 1000,
        4 * options.requests,
        options.threads,
        cpus=server_cpus,
    )
    engine.start()
    own_cpus = os.sched_getaffinity(0)
    times: dict[str, list[float]] = {"in-process": [], "http": []}
    with tempfile.TemporaryDirectory(prefix="spartan-bench-http-") as tmp:
        settings = {
            "backbone": backbone.name,
            "registry_dir": str(Path(tmp) / "registry"),
            "threads": str(options.threads),
            "max_batch_size": str(options.max_batch_size),
            "max_wait_ms": str(options.max_wait_ms),
            "precision": options.precision,
        }
        server = start_server(settings, Path(tmp) / "server.log")
        url = server.url
        if server_cpus is not None and client_cpus is not None:
            server.pin(server_cpus)
            os.sched_setaffinity(0, client_cpus)
        try:

            async def upload() -> None:
                async with AsyncSpartanClient(url) as client:
                    for i, memfile in enumerate(files):
                        await client.put_memory(f"bench-{i}", memfile.to_bytes())

            asyncio.run(upload())

            async def in_process() -> float:
                async def send(i: int) -> None:
                    rows = [
                        RowRequest(t, None, loaded[i % options.tasks]) for t in texts[i * per : (i + 1) * per]
                    ]
                    await engine.submit(rows, time.monotonic() + 600)

                return await _drive(send, options.requests, options.concurrency)

            async def over_http() -> float:
                async with AsyncSpartanClient(url, timeout=600) as client:

                    async def send(i: int) -> None:
                        await client.classify(f"bench-{i % options.tasks}", texts[i * per : (i + 1) * per])

                    return await _drive(send, options.requests, options.concurrency)

            asyncio.run(in_process())  # warm-up of both sides
            asyncio.run(over_http())
            for r in range(options.rounds):
                times["in-process"].append(asyncio.run(in_process()))
                times["http"].append(asyncio.run(over_http()))
                progress(
                    f"round {r + 1}/{options.rounds}: in-process {times['in-process'][-1]:.2f}s, "
                    f"http {times['http'][-1]:.2f}s for {options.requests} requests of {per} texts"
                )
        finally:
            os.sched_setaffinity(0, own_cpus)
            server.stop()
            engine.stop()
    per_minute = {
        name: round(60.0 * options.requests * per / statistics.median(ts), 1) for name, ts in times.items()
    }
    ratio = statistics.median(i / h for i, h in zip(times["in-process"], times["http"], strict=True))
    return {
        "backbone": backbone.name,
        "options": options.__dict__,
        "inst_per_min": per_minute,
        "seconds": {name: [round(t, 3) for t in ts] for name, ts in times.items()},
        "http_over_in_process": round(ratio, 4),
        "pinned": {"server": sorted(server_cpus), "client": sorted(client_cpus or [])}
        if server_cpus
        else None,
        "machine": machine(),
    }


def format_http_table(report: dict[str, object]) -> str:
    rates = report["inst_per_min"]
    assert isinstance(rates, dict)
    return "\n".join(
        [
            "| path | inst/min |",
            "|---|---:|",
            f"| engine in-process | {rates['in-process']} |",
            f"| HTTP (spartan serve, async client) | {rates['http']} |",
            f"| HTTP / in-process | {report['http_over_in_process']} |",
        ]
    )
