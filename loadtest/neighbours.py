"""The noisy-neighbour load test: does one tenant's flood slow another tenant down?

One server with API keys for two tenants, ``flood`` and ``light``, each owning its own task
``lt-0`` (the same name in two namespaces). Two phases, one after the other on the same server:

1. **alone**: ``light`` sends its stream (open loop, Poisson arrivals, one text per request);
2. **flooded**: ``flood`` runs a closed loop far beyond capacity (by default 48 clients sending
   8 texts each) while ``light`` sends the same stream again.

The report gives both tenants' throughput, p50/p95/p99 and status counts per phase, and the mean
engine batch time under the flood (from ``/metrics``). The target: ``light``'s p95 under the
flood stays within its p95 alone plus two batch times, and ``light`` receives no 429.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtest.generator import LoadGenerator, LoadOptions, Sample
from loadtest.launcher import start_server
from loadtest.report import latency_summary, percentile, scrape
from loadtest.synthetic import random_memories
from loadtest.workload import Zipf, load_texts
from memories.atomic import write_figure
from memories.backbones import load_backbone
from memories.lab.host import machine
from service.client import AsyncSpartanClient
from service.keysfile import add_key

TASK = "lt-0"


@dataclass(frozen=True)
class NeighbourOptions:
    data: Path
    texts: str = "sst2"
    backbone: str = "minilm"
    duration_s: float = 30.0  # per phase
    flood_clients: int = 48
    flood_texts: int = 8  # texts per flood request
    light_rate: float = 4.0  # light tenant's requests per second (one text each)
    max_seq_length: int = 64
    threads: int = 1  # the server's torch threads
    server_settings: tuple[tuple[str, str], ...] = ()
    seed: int = 0


def tenant_summary(samples: list[Sample], seconds: float) -> dict[str, object]:
    ok = [s for s in samples if s.status == 200]
    latencies = sorted(s.latency for s in ok)
    return {
        "requests": len(samples),
        "inst_per_min": round(60 * sum(s.inputs for s in ok) / seconds, 1) if seconds else 0.0,
        "latency_s": latency_summary(latencies, with_max=False),
        "statuses": dict(sorted(Counter(str(s.status) for s in samples).items())),
    }


async def _phase(
    url: str, keys: dict[str, str], texts: list[str], options: NeighbourOptions, flood: bool
) -> tuple[dict[str, list[Sample]], float, dict[str, float]]:
    """Run one phase; the samples per tenant, its seconds and the /metrics deltas of the engine."""
    one = Zipf(1, 0.0, options.seed)
    light = LoadGenerator(
        url,
        [TASK],
        texts,
        one,
        LoadOptions(mode="open", rate=options.light_rate, duration_s=options.duration_s, seed=options.seed),
        keys["light"],
    )
    generators = {"light": light}
    if flood:
        generators["flood"] = LoadGenerator(
            url,
            [TASK],
            texts,
            one,
            LoadOptions(
                concurrency=options.flood_clients,
                duration_s=options.duration_s,
                texts_per_request=options.flood_texts,
                seed=options.seed + 1,
            ),
            keys["flood"],
        )
    async with AsyncSpartanClient(url, keys["admin"]) as admin:
        before = scrape(await admin.metrics())
        seconds = max(await asyncio.gather(*(g.run() for g in generators.values())))
        after = scrape(await admin.metrics())
    engine = {
        name: after.get(f"spartan_engine_{name}_total", 0.0) - before.get(f"spartan_engine_{name}_total", 0.0)
        for name in ("batches", "rows", "busy_seconds")
    }
    for tenant in generators:  # the server's view of each tenant: mean latency of answered requests
        count, total = (
            f"spartan_tenant_latency_seconds_{part}{{tenant={tenant}}}" for part in ("count", "sum")
        )
        answered = after.get(count, 0.0) - before.get(count, 0.0)
        seconds_sum = after.get(total, 0.0) - before.get(total, 0.0)
        engine[f"{tenant}_server_mean_s"] = seconds_sum / answered if answered else float("nan")
    return {name: g.samples for name, g in generators.items()}, seconds, engine


async def _upload(url: str, keys: dict[str, str], blob: bytes) -> None:
    for tenant in ("flood", "light"):
        async with AsyncSpartanClient(url, keys[tenant]) as client:
            await client.put_memory(TASK, blob)


def run_noisy_neighbour(
    options: NeighbourOptions, command: str, progress: Callable[[str], None] = print
) -> tuple[dict[str, object], dict[str, dict[str, list[Sample]]]]:
    texts = load_texts(options.data, options.texts)
    backbone = load_backbone(options.backbone)
    blob = random_memories(backbone, 1, options.seed, "lt", options.max_seq_length)[0].to_bytes()
    with tempfile.TemporaryDirectory(prefix="spartan-neighbours-") as tmp:
        keys_file = Path(tmp) / "keys.json"
        keys = {
            "flood": add_key(keys_file, "flood", "tenant"),
            "light": add_key(keys_file, "light", "tenant"),
            "admin": add_key(keys_file, "ops", "admin"),
        }
        settings = {
            "backbone": options.backbone,
            "registry_dir": str(Path(tmp) / "registry"),
            "api_keys_file": str(keys_file),
            "threads": str(options.threads),
            **dict(options.server_settings),
        }
        progress(f"starting spartan serve ({options.backbone}) with tenants flood and light")
        server = start_server(settings, Path(tmp) / "server.log")
        try:
            asyncio.run(_upload(server.url, keys, blob))
            progress(f"phase alone: light sends {options.light_rate:g} req/s for {options.duration_s:g} s")
            alone, alone_s, _ = asyncio.run(_phase(server.url, keys, texts, options, flood=False))
            progress(
                f"phase flooded: flood runs {options.flood_clients} clients x {options.flood_texts} texts, "
                "light sends the same stream"
            )
            flooded, flooded_s, engine = asyncio.run(_phase(server.url, keys, texts, options, flood=True))
        finally:
            exit_reason = server.exit_reason()
            server.stop()
    batches, rows, busy = engine["batches"], engine["rows"], engine["busy_seconds"]
    mean_batch_s = busy / batches if batches else None
    # a full batch's time at that load: the flood's batches are full, the light tenant's own small
    # batches (the fair share at work) would pull a plain mean down
    full_batch_s = busy / rows * int(settings.get("max_batch_size", "32")) if rows else None
    phases = {
        "alone": {"light": tenant_summary(alone["light"], alone_s)},
        "flooded": {name: tenant_summary(s, flooded_s) for name, s in flooded.items()},
    }
    report: dict[str, object] = {
        "phases": phases,
        "engine_under_flood": {
            "batches": int(batches),
            "mean_batch_rows": round(rows / batches, 1) if batches else None,
            "mean_batch_seconds": round(mean_batch_s, 4) if mean_batch_s is not None else None,
            "full_batch_seconds": round(full_batch_s, 4) if full_batch_s is not None else None,
            "server_mean_latency_s": {
                tenant: round(engine[f"{tenant}_server_mean_s"], 4) for tenant in ("light", "flood")
            },
        },
        "target": _target(phases, full_batch_s, mean_batch_s),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        "server_settings": {k: v for k, v in settings.items() if k not in ("api_keys_file", "registry_dir")},
        "server_exit": exit_reason,
        "command": command,
        "machine": machine(),
    }
    return report, {"alone": alone, "flooded": flooded}


def _target(
    phases: dict[str, dict[str, dict[str, object]]], full_batch_s: float | None, mean_batch_s: float | None
) -> dict[str, object]:
    """The light tenant's p95 under the flood against its p95 alone plus two batch times, with the
    batch time read two ways: a full batch's, and the plain mean over every batch run."""
    alone, flooded = phases["alone"]["light"], phases["flooded"]["light"]
    p95_alone = alone["latency_s"]["p95"]  # type: ignore[index]
    p95_flooded = flooded["latency_s"]["p95"]  # type: ignore[index]
    shed = flooded["statuses"].get("429", 0)  # type: ignore[attr-defined]
    target: dict[str, object] = {
        "light_p95_alone_s": p95_alone,
        "light_p95_flooded_s": p95_flooded,
        "light_429": shed,
    }
    for name, batch_s in (("full_batch", full_batch_s), ("mean_batch", mean_batch_s)):
        bound = p95_alone + 2 * batch_s if p95_alone is not None and batch_s is not None else None
        target[f"bound_{name}_s"] = round(bound, 4) if bound is not None else None
        target[f"met_{name}"] = (
            bound is not None and p95_flooded is not None and p95_flooded <= bound and not shed
        )
    return target


def plot_neighbours(samples: dict[str, dict[str, list[Sample]]], title: str, path: Path) -> None:
    """Latency over time of both tenants in both phases, and the light tenant's percentiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    offset = 0.0
    for phase in ("alone", "flooded"):
        end = 0.0
        for tenant, marker in (("flood", "."), ("light", "o")):
            ok = [s for s in samples[phase].get(tenant, []) if s.status == 200]
            if ok:
                left.scatter(
                    [offset + s.start + s.latency for s in ok],
                    [s.latency for s in ok],
                    s=4 if tenant == "flood" else 10,
                    marker=marker,
                    alpha=0.4 if tenant == "flood" else 0.9,
                    label=f"{tenant} ({phase})",
                )
                end = max(end, max(s.start + s.latency for s in ok))
        offset += end + 2
    left.set(xlabel="seconds", ylabel="latency (s)", title="answered requests", yscale="log")
    left.legend(fontsize=8)
    names = ["p50", "p95", "p99"]
    for i, phase in enumerate(("alone", "flooded")):
        latencies = sorted(s.latency for s in samples[phase]["light"] if s.status == 200)
        values = [percentile(latencies, q) or 0.0 for q in (50, 95, 99)]
        right.bar([j + 0.4 * i for j in range(3)], values, width=0.4, label=f"light, {phase}")
    right.set_xticks([j + 0.2 for j in range(3)], names)
    right.set(ylabel="latency (s)", title="the light tenant's latency")
    right.legend()
    figure.suptitle(title)
    figure.tight_layout()
    write_figure(figure, path, dpi=100)
    plt.close(figure)
