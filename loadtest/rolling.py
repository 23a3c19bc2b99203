"""Rolling restart behind a real reverse proxy: does a restart lose requests?

Two ``spartan serve`` replicas share one Redis registry (their own key prefix, removed afterwards)
behind haproxy, with the config shipped in ``deploy/haproxy/haproxy.cfg`` (health checks on
``/readyz``). A closed loop sends steady load through haproxy the whole time. After a settling
period, each replica in turn gets SIGTERM, drains (``/readyz`` 503, still serving), exits, is
started again on its port and becomes ready, and the next one follows after another settling
period. The report counts every answer by status over the whole roll (the target: only 200s),
with the restart events on the timeline (JSON + PNG).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtest.errors import LoadTestError
from loadtest.generator import LoadGenerator, LoadOptions, Sample
from loadtest.launcher import ServerProcess, drop_redis_prefixes, free_port, is_ready, start_server
from loadtest.report import summarise, timeline
from loadtest.synthetic import random_memories
from loadtest.workload import Zipf, load_texts
from memories.atomic import write_figure
from memories.backbones import load_backbone
from memories.lab.host import machine
from service.client import AsyncSpartanClient

HAPROXY_CONFIG = Path("deploy/haproxy/haproxy.cfg")  # relative to the repository, where it ships
TASK = "lt-0"


@dataclass(frozen=True)
class RollEvent:
    t: float  # seconds since the load started
    event: str  # SIGTERM, exited, ready
    replica: str
    code: int | None = None  # the exit code, for "exited"


@dataclass(frozen=True)
class RollingOptions:
    data: Path
    texts: str = "sst2"
    backbone: str = "minilm"
    redis_url: str = "redis://127.0.0.1:6379/0"
    haproxy_config: Path = HAPROXY_CONFIG
    concurrency: int = 8  # closed-loop clients through the proxy
    settle_s: float = 10.0  # load before the first restart, between restarts and after the last
    drain_s: float = 2.0  # each replica's SPARTAN_DRAIN_S
    rounds: int = 1  # every replica is restarted once per round
    max_seq_length: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.rounds < 1 or self.settle_s <= 0 or self.drain_s < 0:
            raise LoadTestError("concurrency, rounds and the settle time must be positive, the drain >= 0")


class _Replica:
    def __init__(self, name: str, settings: dict[str, str], folder: Path) -> None:
        self.name, self.settings, self.folder = name, settings, folder
        self.port = int(settings["port"])
        self.starts = 0
        self.server: ServerProcess | None = None

    def start(self) -> None:
        self.starts += 1
        log = self.folder / f"replica-{self.name}-{self.starts}.log"
        self.server = start_server(self.settings, log, ready_timeout=300, port=self.port)

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM, then wait for the exit; the exit code."""
        assert self.server is not None, "the replica is not running"
        self.server.process.send_signal(signal.SIGTERM)
        return self.server.process.wait(timeout)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def _haproxy(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("haproxy")
    if binary is None:
        raise LoadTestError("haproxy is not installed (Debian: apt-get install haproxy)")
    if not config.is_file():
        raise LoadTestError(
            f"no haproxy config at {config}; run from the repository or pass --haproxy-config"
        )
    check = subprocess.run([binary, "-c", "-f", str(config)], env=env, capture_output=True, text=True)
    if check.returncode != 0:
        raise LoadTestError(f"haproxy refuses {config}: {check.stdout}{check.stderr}")
    with log.open("wb") as out:
        return subprocess.Popen(
            [binary, "-db", "-f", str(config)], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _wait_ready(url: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if is_ready(url):
            return
        time.sleep(0.1)
    raise LoadTestError(f"{url} did not become ready within {seconds:g} s")


async def _roll(
    replicas: list[_Replica], options: RollingOptions, started: float, progress: Callable[[str], None]
) -> list[RollEvent]:
    """Restart every replica in turn, ``rounds`` times; the events with their time in the run."""
    events: list[RollEvent] = []

    def event(what: str, replica: _Replica, code: int | None = None) -> None:
        events.append(RollEvent(round(time.monotonic() - started, 2), what, replica.name, code))
        progress(f"[{time.monotonic() - started:5.1f} s] replica {replica.name}: {what}")

    await asyncio.sleep(options.settle_s)
    for _ in range(options.rounds):
        for replica in replicas:
            event("SIGTERM", replica)
            code = await asyncio.to_thread(replica.terminate, options.drain_s + 120)
            event("exited", replica, code)
            await asyncio.to_thread(replica.start)
            event("ready", replica)
            await asyncio.sleep(options.settle_s)
    return events


async def _load_during_roll(
    proxy_url: str,
    texts: list[str],
    replicas: list[_Replica],
    options: RollingOptions,
    progress: Callable[[str], None],
) -> tuple[LoadGenerator, float, list[RollEvent]]:
    load = LoadOptions(concurrency=options.concurrency, duration_s=24 * 3600, seed=options.seed, timeout_s=60)
    generator = LoadGenerator(proxy_url, [TASK], texts, Zipf(1, 0.0, options.seed), load)
    run = asyncio.create_task(generator.run())
    started = time.monotonic()
    try:
        events = await _roll(replicas, options, started, progress)
    finally:
        generator.stop()
    seconds = await run
    return generator, seconds, events


def run_rolling_restart(
    options: RollingOptions, command: str, progress: Callable[[str], None] = print
) -> tuple[dict[str, object], list[Sample], list[RollEvent]]:
    texts = load_texts(options.data, options.texts)
    backbone = load_backbone(options.backbone)
    blob = random_memories(backbone, 1, options.seed, "lt", options.max_seq_length)[0].to_bytes()
    prefix = f"rolling-{secrets.token_hex(4)}"  # this run's keys in the shared Redis
    with tempfile.TemporaryDirectory(prefix="spartan-rolling-") as tmp:
        folder = Path(tmp)
        replicas = []
        for name in ("a", "b"):
            settings = {
                "backbone": options.backbone,
                "registry": "redis",
                "redis_url": options.redis_url,
                "redis_prefix": prefix,
                "drain_s": str(options.drain_s),
                "threads": "1",
                "port": str(free_port()),
            }
            replicas.append(_Replica(name, settings, folder))
        proxy_port = free_port()
        env = {
            **os.environ,
            "SPARTAN_PROXY_BIND": f"127.0.0.1:{proxy_port}",
            "SPARTAN_REPLICA_A": f"127.0.0.1:{replicas[0].port}",
            "SPARTAN_REPLICA_B": f"127.0.0.1:{replicas[1].port}",
        }
        proxy_url = f"http://127.0.0.1:{proxy_port}"
        haproxy = None
        try:
            for replica in replicas:
                progress(f"starting replica {replica.name} on port {replica.port}")
                replica.start()
            haproxy = _haproxy(options.haproxy_config, env, folder / "haproxy.log")
            _wait_ready(proxy_url)
            asyncio.run(_upload(proxy_url, blob))
            progress(f"steady load through haproxy ({proxy_url}), {options.concurrency} clients")
            generator, seconds, events = asyncio.run(
                _load_during_roll(proxy_url, texts, replicas, options, progress)
            )
        finally:
            if haproxy is not None:
                haproxy.terminate()
                haproxy.wait(10)
            for replica in replicas:
                replica.stop()
            drop_redis_prefixes(options.redis_url, [prefix])
    report = summarise(generator.samples, seconds, {}, {})
    report.pop("server")  # two replicas restarted: no single server's counters span the run
    failed = sum(1 for sample in generator.samples if sample.status != 200)
    report.update(
        {
            "failed_requests": failed,
            "target_zero_failed": failed == 0,
            "events": [asdict(e) for e in events],
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
            "command": command,
            "machine": machine(),
        }
    )
    return report, generator.samples, events


async def _upload(url: str, blob: bytes) -> None:
    async with AsyncSpartanClient(url) as client:
        await client.put_memory(TASK, blob)


def plot_rolling(
    samples: list[Sample], seconds: float, events: list[RollEvent], title: str, path: Path
) -> None:
    """Answers per second with the restarts marked, and the latency over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = timeline(samples, seconds)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    top.plot(range(len(series["ok_inst_per_s"])), series["ok_inst_per_s"], label="answered 200 (per s)")
    failed = [s for s in samples if s.status != 200]
    if failed:
        top.scatter(
            [s.start for s in failed],
            [0.02] * len(failed),
            transform=top.get_xaxis_transform(),
            color="red",
            marker="x",
            label="failed",
        )
    bottom.scatter([s.start for s in samples], [s.latency for s in samples], s=2, alpha=0.4)
    for event in events:
        for axis in (top, bottom):
            axis.axvline(event.t, color="grey", linestyle=":", linewidth=0.8)
        where = (event.t, 0.03)  # x in seconds, y as a fraction of the axis height
        label = f"{event.replica}: {event.event}"
        top.annotate(label, where, xycoords=top.get_xaxis_transform(), rotation=90, fontsize=7)
    top.set(ylabel="inst/s", title=title)
    top.legend(loc="upper right")
    bottom.set(xlabel="seconds", ylabel="latency (s)")
    figure.tight_layout()
    write_figure(figure, path, dpi=110)
    plt.close(figure)
