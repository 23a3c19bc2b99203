"""One load test end to end: server (started here, optionally inside a device profile's cgroup, or
given by URL), memories uploaded through the API, the scenario's load, report and plot.

The memories are untrained (random) memories for the server's backbone: the load test measures
serving, not accuracy. The texts are real (``--data``), so token lengths and padding are real.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from loadtest.cgroup import Limits
from loadtest.errors import LoadTestError
from loadtest.generator import LoadGenerator, LoadOptions, Sample, check_loopback
from loadtest.launcher import ServerProcess, start_server
from loadtest.profiles import PROFILES_FILE, Profile, load_profile
from loadtest.report import scrape, summarise
from loadtest.scenarios import Scenario, get_scenario
from loadtest.synthetic import random_memories
from loadtest.workload import Zipf, load_texts
from memories.backbones import load_backbone
from memories.hardware import cpu
from memories.lab.host import machine
from memories.memfile import MemoryFile
from service.client import AsyncSpartanClient


@dataclass(frozen=True)
class RunOptions:
    scenario: str
    data: Path
    texts: str = "sst2"  # data set whose dev texts are sent
    backbone: str = "minilm"
    url: str | None = None  # a running server; None = start one here
    profile: str | None = None  # start the server inside this device profile's cgroup
    server_cpuset: str | None = None  # or on these CPUs only (no quota), e.g. "0"
    profiles: Path = PROFILES_FILE
    duration_s: float = 30.0
    max_requests: int | None = None
    concurrency: int | None = None  # overrides the scenario's
    tasks: int | None = None  # overrides the scenario's
    texts_per_request: int | None = None  # overrides the scenario's
    max_seq_length: int = 64  # tokens per input (the memories' truncation), as in the calibration
    server_settings: tuple[tuple[str, str], ...] = ()  # extra SPARTAN_* settings for a server started here
    capacity_probe_s: float = 10.0  # overload: closed-loop run that measures capacity first
    seed: int = 0
    api_key: str | None = None

    def __post_init__(self) -> None:
        if self.tasks is not None and self.tasks < 1:
            raise LoadTestError(f"tasks must be at least 1, got {self.tasks}")


def _server_settings(
    scenario: Scenario, options: RunOptions, profile: Profile | None, memory_bytes: int, registry: Path
) -> dict[str, str]:
    settings = {
        "backbone": options.backbone,
        "registry_dir": str(registry),
        **scenario.server,
        **dict(options.server_settings),
    }
    if profile is not None:
        settings["threads"] = str(profile.threads)
        settings["precision"] = profile.precision  # the device's, not what auto would pick here
    if scenario.cache_fraction is not None:
        settings["cache_bytes"] = str(
            max(1 << 20, int(scenario.cache_fraction * memory_bytes * scenario.tasks))
        )
    return settings


async def upload_memories(client: AsyncSpartanClient, names: Sequence[str], blobs: Sequence[bytes]) -> None:
    """PUT each memory file under its task name, one after the other (the load tests' set-up)."""
    for name, blob in zip(names, blobs, strict=True):
        await client.put_memory(name, blob)


async def _hot_swaps(
    client: AsyncSpartanClient, task: str, versions: list[MemoryFile], every_s: float, until: float
) -> list[dict[str, float]]:
    """Upload alternating memories for ``task`` every ``every_s`` until ``until``; what happened."""
    done = []
    n = 0
    while time.monotonic() + every_s < until:
        await asyncio.sleep(every_s)
        started = time.monotonic()
        info = await client.put_memory(task, versions[n % len(versions)].to_bytes())
        done.append({"version": info.version, "put_seconds": round(time.monotonic() - started, 3)})
        n += 1
    return done


RSS_EVERY_S = 5.0


async def _sample_rss(client: AsyncSpartanClient, into: list[tuple[float, float, float]]) -> None:
    """Append (seconds since start, the server's resident bytes, the bytes its cache holds) every
    RSS_EVERY_S until cancelled: what the cache does not explain is the rest of the process."""
    started = time.monotonic()
    while True:
        try:
            metrics = scrape(await client.metrics())
        except httpx.HTTPError:  # the server is gone; the run reports how it ended
            return
        if (rss := metrics.get("spartan_process_resident_bytes")) is not None:
            into.append((time.monotonic() - started, rss, metrics.get("spartan_cache_resident_bytes", 0.0)))
        await asyncio.sleep(RSS_EVERY_S)


def _stay_off(cpuset: str, progress: Callable[[str], None]) -> None:
    """Keep the load generator off the server's CPUs when others are left, so it does not steal them."""
    taken: set[int] = set()
    for part in cpuset.split(","):
        first, _, last = part.partition("-")
        taken.update(range(int(first), int(last or first) + 1))
    free = os.sched_getaffinity(0) - taken
    if free:
        os.sched_setaffinity(0, free)
        progress(f"load generator on CPUs {sorted(free)}, server on {cpuset}")


def _progress_line(samples: list[Sample], elapsed: float) -> str:
    ok = [s for s in samples if s.status == 200]
    recent = sorted(s.latency for s in ok[-200:])
    p95 = recent[int(0.95 * (len(recent) - 1))] if recent else float("nan")
    errors = len(samples) - len(ok)
    rate = 60 * sum(s.inputs for s in ok) / elapsed if elapsed else 0.0
    return (
        f"[{elapsed:5.0f} s] {len(ok)} answered, {rate:.0f} inst/min, {errors} errors, recent p95 {p95:.3f} s"
    )


def run_load_test(
    options: RunOptions, command: str, progress: Callable[[str], None] = print
) -> tuple[dict[str, object], list[Sample]]:
    scenario = get_scenario(options.scenario)
    if options.tasks is not None:
        scenario = dataclasses.replace(scenario, tasks=options.tasks)
    texts = load_texts(options.data, options.texts)
    backbone = load_backbone(options.backbone)
    distinct = min(scenario.tasks, scenario.distinct_memories or scenario.tasks)
    files = random_memories(backbone, distinct, options.seed, "lt", options.max_seq_length)
    swaps = (
        random_memories(backbone, 2, options.seed + 1, "lt-swap", options.max_seq_length)
        if scenario.hot_swap_every_s
        else []
    )
    names = [f"lt-{i}" for i in range(scenario.tasks)]
    memory_bytes = files[0].to_packed().nbytes()
    profile = load_profile(options.profile, options.profiles) if options.profile else None
    if profile is not None and options.url is None:
        profile.check_host(options.profile or "", cpu())
    own_cpus = os.sched_getaffinity(0)
    with tempfile.TemporaryDirectory(prefix="spartan-loadtest-") as tmp:
        server: ServerProcess | None = None
        settings = _server_settings(scenario, options, profile, memory_bytes, Path(tmp) / "registry")
        url = options.url
        if url is None:
            cpus_only = Limits(cpuset=options.server_cpuset) if options.server_cpuset else None
            limits = profile.limits if profile is not None else cpus_only
            where = f" in profile {options.profile}" if options.profile else ""
            progress(f"starting spartan serve ({options.backbone}){where}")
            server = start_server(settings, Path(tmp) / "server.log", limits=limits)
            url = server.url
            if limits is not None and limits.cpuset is not None:
                _stay_off(limits.cpuset, progress)
        else:
            check_loopback(url)
            if scenario.server or scenario.cache_fraction:
                progress(f"note: {scenario.name} expects server settings {settings}; {url} keeps its own")
        try:
            report, samples = asyncio.run(
                _run(scenario, options, url, files, memory_bytes, swaps, names, texts, progress)
            )
        finally:
            os.sched_setaffinity(0, own_cpus)
            exit_reason = server.exit_reason() if server is not None else None
            if server is not None:
                server.stop()
    report.update(
        {
            "scenario": asdict(scenario),
            "options": {
                k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items() if k != "api_key"
            },
            "server_settings": settings if options.url is None else None,
            "server_exit": exit_reason,
            "memory_bytes": memory_bytes,
            "command": command,
            "machine": machine(),
        }
    )
    if profile is not None:
        report["profile"] = profile.model_dump(by_alias=True, mode="json")
    return report, samples


async def _run(
    scenario: Scenario,
    options: RunOptions,
    url: str,
    files: list[MemoryFile],
    memory_bytes: int,
    swaps: list[MemoryFile],
    names: list[str],
    texts: list[str],
    progress: Callable[[str], None],
) -> tuple[dict[str, object], list[Sample]]:
    async with AsyncSpartanClient(url, options.api_key, timeout=300) as client:
        progress(f"uploading {len(names)} memories ({memory_bytes >> 10} KiB each)")
        blobs = [memfile.to_bytes() for memfile in files]
        await upload_memories(client, names, [blobs[i % len(blobs)] for i in range(len(names))])
        popularity = Zipf(scenario.tasks, scenario.zipf_s, options.seed)
        concurrency = options.concurrency or scenario.concurrency
        per_request = options.texts_per_request or scenario.texts_per_request
        load = LoadOptions(
            mode="closed",
            concurrency=concurrency,
            duration_s=options.duration_s,
            max_requests=options.max_requests,
            texts_per_request=per_request,
            seed=options.seed,
        )
        capacity = None
        if scenario.overload_factor is not None:
            probe_load = dataclasses.replace(load, duration_s=options.capacity_probe_s, max_requests=None)
            probe = LoadGenerator(url, names, texts, popularity, probe_load, options.api_key)
            seconds = await probe.run()
            capacity = sum(s.inputs for s in probe.samples if s.status == 200) / seconds  # inst/s
            if capacity <= 0:
                raise LoadTestError("the capacity probe got no answers; is the server healthy?")
            rate = scenario.overload_factor * capacity / per_request
            offered = f"{scenario.overload_factor}x = {rate:.1f} req/s"
            progress(f"capacity {60 * capacity:.0f} inst/min; offering {offered}")
            load = dataclasses.replace(load, mode="open", rate=rate)
        before = scrape(await client.metrics())
        generator = LoadGenerator(url, names, texts, popularity, load, options.api_key)
        swap_job = None
        if scenario.hot_swap_every_s is not None:
            until = time.monotonic() + options.duration_s
            swap_job = asyncio.create_task(
                _hot_swaps(client, names[0], swaps, scenario.hot_swap_every_s, until)
            )
        rss: list[tuple[float, float, float]] = []
        sampler = asyncio.create_task(_sample_rss(client, rss))
        seconds = await generator.run(lambda elapsed: progress(_progress_line(generator.samples, elapsed)))
        sampler.cancel()
        swapped = await swap_job if swap_job is not None else None
        try:
            after = scrape(await client.metrics())
        except httpx.HTTPError as exc:  # the server died during the run: report what the clients saw
            progress(f"the server did not answer /metrics after the load ({type(exc).__name__})")
            after = {}
    report = summarise(generator.samples, seconds, before, after)
    report["capacity_inst_per_min"] = round(60 * capacity, 1) if capacity is not None else None
    report["server_rss"] = {
        "max_bytes": int(max((b for _, b, _ in rss), default=0)),
        "every_s": RSS_EVERY_S,
        "samples": [[round(t, 1), int(b), int(c)] for t, b, c in rss],  # seconds, RSS, cache bytes
    }
    if load.mode == "open":  # an open loop is only as good as the rate the generator really sent
        sent = len(generator.samples) / max(generator.sending_seconds, 1e-9)  # over the sending window
        report["offered_req_per_s"] = {"target": round(load.rate, 1), "sent": round(sent, 1)}
        if sent < 0.9 * load.rate:
            progress(f"warning: the generator sent {sent:.1f} req/s of the {load.rate:.1f} asked (CPU-bound)")
    if swapped is not None:
        first_task = [s for s in generator.samples if s.task == 0 and s.status == 200]
        report["hot_swap"] = {
            "uploads": swapped,
            "versions_served_for_swapped_task": sorted({s.version for s in first_task if s.version}),
            "median_put_seconds": statistics.median(u["put_seconds"] for u in swapped) if swapped else None,
        }
    return report, generator.samples
