"""The batching-policy curve: offered load against throughput and p95 latency, per policy.

For each policy (a set of server settings: ``batch-1`` runs every request alone, ``dynamic``
the engine's micro-batching), one server is started and swept through increasing open-loop
rates (Poisson arrivals of single-text requests over several tasks). Each point reports the
rate really sent, inst/min answered, latency percentiles and the server's mean batch size. A
policy's sweep stops after the first point whose p95 exceeds ``stop_p95_s`` (it is saturated:
higher rates only queue). The report names, per policy, the highest rate served with p95 within
``p95_budget_s``: the number that chooses the default.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.errors import LoadTestError
from loadtest.generator import LoadGenerator, LoadOptions
from loadtest.launcher import start_server
from loadtest.report import scrape, summarise
from loadtest.run import upload_memories
from loadtest.synthetic import random_memories
from loadtest.workload import Zipf, load_texts
from memories.atomic import write_figure
from memories.backbones import load_backbone
from memories.memfile import MemoryFile
from service.client import AsyncSpartanClient

DEFAULT_POLICIES: dict[str, dict[str, str]] = {
    "batch-1": {"max_batch_size": "1", "max_wait_ms": "0"},
    "dynamic, no wait": {"max_batch_size": "32", "max_wait_ms": "0"},
    "dynamic, 5 ms wait": {"max_batch_size": "32", "max_wait_ms": "5"},
}


@dataclass(frozen=True)
class CurveOptions:
    data: Path
    texts: str = "sst2"
    backbone: str = "roberta-base-random"
    rates: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)  # requests per second
    seconds_per_point: float = 30.0
    policies: dict[str, dict[str, str]] = field(default_factory=lambda: dict(DEFAULT_POLICIES))
    tasks: int = 8
    max_seq_length: int = 64
    threads: int = 1
    p95_budget_s: float = 1.0
    stop_p95_s: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.rates or min(self.rates) <= 0 or list(self.rates) != sorted(self.rates):
            raise LoadTestError("rates must be positive and increasing")
        if not self.policies or self.seconds_per_point <= 0 or self.tasks < 1:
            raise LoadTestError("at least one policy, one task and a positive duration per point are needed")


Point = dict[str, Any]  # one rate's numbers, JSON-ready


async def _point(url: str, names: list[str], texts: list[str], rate: float, options: CurveOptions) -> Point:
    load = LoadOptions(
        mode="open",
        rate=rate,
        duration_s=options.seconds_per_point,
        max_in_flight=256,
        timeout_s=60.0,
        seed=options.seed,
    )
    async with AsyncSpartanClient(url) as client:
        before = scrape(await client.metrics())
        generator = LoadGenerator(url, names, texts, Zipf(len(names), 1.0, options.seed), load)
        seconds = await generator.run()
        after = scrape(await client.metrics())
    report: dict[str, Any] = summarise(generator.samples, seconds, before, after)
    latency, server = report["latency_s"], report["server"]
    return {
        "offered_req_per_s": rate,
        "sent_req_per_s": round(len(generator.samples) / max(generator.sending_seconds, 1e-9), 2),
        "inst_per_min": report["inst_per_min"],
        "p50_s": latency["p50"],
        "p95_s": latency["p95"],
        "errors": report["errors"],
        "mean_batch_size": server["mean_batch_size"],
    }


def run_curve(options: CurveOptions, progress: Callable[[str], None] = print) -> dict[str, object]:
    """Sweep every policy through the rates; returns the JSON-ready report."""
    texts = load_texts(options.data, options.texts)
    backbone = load_backbone(options.backbone)
    files = random_memories(backbone, options.tasks, options.seed, "curve", options.max_seq_length)
    names = [f"curve-{i}" for i in range(options.tasks)]
    curves: dict[str, object] = {}
    best: dict[str, float | None] = {}
    for policy, settings in options.policies.items():
        with tempfile.TemporaryDirectory(prefix="spartan-curve-") as tmp:
            server = start_server(
                {
                    "backbone": options.backbone,
                    "registry_dir": str(Path(tmp) / "registry"),
                    "threads": str(options.threads),
                    "queue_size": "4096",
                    **settings,
                },
                Path(tmp) / "server.log",
                ready_timeout=600,
            )
            try:
                points = asyncio.run(_sweep(server.url, files, names, texts, options, policy, progress))
            finally:
                server.stop()
        curves[policy] = {"settings": settings, "points": points}
        within = [p for p in points if p["p95_s"] is not None and p["p95_s"] <= options.p95_budget_s]
        best[policy] = max((float(p["inst_per_min"]) for p in within), default=None)
    return {
        "backbone": options.backbone,
        "texts_per_request": 1,
        "max_seq_length": options.max_seq_length,
        "threads": options.threads,
        "seconds_per_point": options.seconds_per_point,
        "p95_budget_s": options.p95_budget_s,
        "curves": curves,
        "best_inst_per_min_within_budget": best,
    }


async def _sweep(
    url: str,
    files: list[MemoryFile],
    names: list[str],
    texts: list[str],
    options: CurveOptions,
    policy: str,
    progress: Callable[[str], None],
) -> list[Point]:
    async with AsyncSpartanClient(url) as client:
        await upload_memories(client, names, [memfile.to_bytes() for memfile in files])
    points = []
    for rate in options.rates:
        point = await _point(url, names, texts, rate, options)
        points.append(point)
        progress(
            f"{policy}: {rate} req/s offered, {point['sent_req_per_s']} sent -> {point['inst_per_min']} "
            f"inst/min, p95 {point['p95_s']} s, mean batch {point['mean_batch_size']}"
        )
        if point["p95_s"] is None or point["p95_s"] > options.stop_p95_s:
            break
    return points


def plot_curve(report: dict[str, Any], path: Path) -> None:
    """Throughput and p95 against offered load, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = report["curves"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for policy, curve in curves.items():
        points = curve["points"]
        offered = [60 * p["sent_req_per_s"] for p in points]
        left.plot(offered, [p["inst_per_min"] for p in points], marker="o", label=policy)
        right.plot(offered, [p["p95_s"] for p in points], marker="o", label=policy)
    top = max(60 * p["sent_req_per_s"] for c in curves.values() for p in c["points"])
    left.plot([0, top], [0, top], color="grey", linestyle=":", label="answered = offered")
    left.set(xlabel="offered (inst/min)", ylabel="answered (inst/min)", title="throughput")
    right.axhline(report["p95_budget_s"], color="grey", linestyle=":", label="p95 budget")
    right.set(xlabel="offered (inst/min)", ylabel="p95 latency (s)", title="p95 latency", yscale="log")
    left.legend()
    right.legend()
    figure.suptitle(f"batching policy, {report['backbone']}, single-text requests")
    figure.tight_layout()
    write_figure(figure, path, dpi=110)
    plt.close(figure)
