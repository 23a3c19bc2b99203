"""Slow and hostile clients: does a well-behaved client keep its latency while others misbehave?

One server, one task. A light client sends an open-loop stream (Poisson arrivals, one text per
request) in five phases of the same length, one after the other on the same server:

1. **normal**: the light client alone;
2. **slow-headers**: ``slow_headers`` connections send their headers a byte at a time, without
   end (each reconnects when the server closes it);
3. **idle**: ``idle`` connections are opened and send nothing (reopened when closed);
4. **slow-bodies**: ``slow_bodies`` uploads announce 1 MB and send 1 kB per second;
5. **non-readers**: ``non_readers`` clients ask for the memory file and never read the answer.

The hostile connections run in a process of their own, so their reconnect storms do not delay
the light client's own measurement.

The report gives the light client's p50/p95/p99 and statuses per phase, what the server did to
the hostile connections (closed, answered 408, refused), and the target: the light client's p95
in every phase within 2x its p95 in the normal phase, every light request answered 200.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtest.generator import LoadGenerator, LoadOptions, Sample
from loadtest.launcher import start_server
from loadtest.neighbours import tenant_summary
from loadtest.report import percentile
from loadtest.synthetic import random_memories
from loadtest.workload import Zipf, load_texts
from memories.atomic import write_figure
from memories.backbones import load_backbone
from memories.lab.host import machine
from service.client import AsyncSpartanClient

TASK = "hc-0"
PHASES = ("normal", "slow-headers", "idle", "slow-bodies", "non-readers")


@dataclass(frozen=True)
class HostileOptions:
    data: Path
    texts: str = "sst2"
    backbone: str = "minilm"
    duration_s: float = 30.0  # per phase
    light_rate: float = 4.0  # the light client's requests per second (one text each)
    slow_headers: int = 200
    idle: int = 2000
    slow_bodies: int = 50
    non_readers: int = 50
    max_seq_length: int = 64
    threads: int = 1  # the server's torch threads
    server_settings: tuple[tuple[str, str], ...] = ()
    seed: int = 0


Outcomes = Counter[str]


async def _first_line(reader: asyncio.StreamReader) -> str:
    """How the server ended a hostile connection: its status line, or closed without one."""
    try:
        line = await reader.readline()
    except ConnectionError:
        return "reset"
    return line.split(b" ")[1].decode() if line.startswith(b"HTTP/1.1 ") else "closed"


async def _dribble(
    host: str,
    port: int,
    stop: asyncio.Event,
    outcomes: Outcomes,
    what: str,
    head: bytes,
    piece: bytes,
    every_s: float,
) -> None:
    """Send ``head``, then ``piece`` every ``every_s`` until the server ends the connection
    (counted under ``what`` with how it ended) or the phase stops; then again."""
    while not stop.is_set():
        reader, writer = await asyncio.open_connection(host, port)
        ended = asyncio.ensure_future(_first_line(reader))
        writer.write(head)
        while not stop.is_set() and not ended.done():
            writer.write(piece)
            await asyncio.wait([ended], timeout=every_s)
        if ended.done():
            outcomes[f"{what} {ended.result()}"] += 1
        ended.cancel()
        writer.close()


async def _slow_headers(host: str, port: int, stop: asyncio.Event, outcomes: Outcomes) -> None:
    head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: "  # a header that never ends: a byte per 0.5 s
    await _dribble(host, port, stop, outcomes, "slow-headers", head, b"a", 0.5)


async def _idle(host: str, port: int, stop: asyncio.Event, outcomes: Outcomes) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            outcomes["idle connect failed"] += 1
            await asyncio.sleep(0.5)
            continue
        ended = asyncio.ensure_future(_first_line(reader))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([ended, stopped], return_when=asyncio.FIRST_COMPLETED)
        if ended.done():
            outcomes[f"idle {ended.result()}"] += 1
        ended.cancel()
        stopped.cancel()
        writer.close()


async def _slow_body(host: str, port: int, stop: asyncio.Event, outcomes: Outcomes) -> None:
    head = (  # 1 MB announced, 1 kB sent per second
        f"PUT /v1/memories/{TASK}-slow HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\n"
        "content-length: 1000000\r\n\r\n"
    ).encode()
    await _dribble(host, port, stop, outcomes, "slow-body", head, b"x" * 1000, 1.0)


async def _non_reader(host: str, port: int, stop: asyncio.Event, outcomes: Outcomes) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, never emptied
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    sock.send(f"GET /v1/memories/{TASK}/versions/1/file HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    await stop.wait()
    outcomes["non-reader held"] += 1
    sock.close()


Hostile = Callable[[str, int, asyncio.Event, Outcomes], Awaitable[None]]


ACTORS: dict[str, Hostile] = {
    "normal": _idle,
    "slow-headers": _slow_headers,
    "idle": _idle,
    "slow-bodies": _slow_body,
    "non-readers": _non_reader,
}


def _counts(options: HostileOptions) -> dict[str, int]:
    return {
        "normal": 0,
        "slow-headers": options.slow_headers,
        "idle": options.idle,
        "slow-bodies": options.slow_bodies,
        "non-readers": options.non_readers,
    }


def _hostile_process(phase: str, count: int, url: str, stop: Any, results: Any) -> None:
    """The hostile connections of one phase, in their own process (their own event loop and
    CPU time: their reconnect storms must not delay the light client's measurement)."""

    async def main() -> Outcomes:
        host, port = url.removeprefix("http://").split(":")
        halt, outcomes = asyncio.Event(), Counter[str]()
        actors = [asyncio.ensure_future(ACTORS[phase](host, int(port), halt, outcomes)) for _ in range(count)]
        await asyncio.to_thread(stop.wait)
        halt.set()
        for result in await asyncio.gather(*actors, return_exceptions=True):
            if isinstance(result, BaseException):
                outcomes[f"client error {type(result).__name__}"] += 1
        return outcomes

    results.put(dict(asyncio.run(main())))


async def _light(url: str, texts: list[str], options: HostileOptions) -> tuple[list[Sample], float]:
    light = LoadGenerator(
        url,
        [TASK],
        texts,
        Zipf(1, 0.0, options.seed),
        LoadOptions(mode="open", rate=options.light_rate, duration_s=options.duration_s, seed=options.seed),
    )
    return light.samples, await light.run()


def _phase(
    url: str, texts: list[str], options: HostileOptions, phase: str, count: int
) -> tuple[list[Sample], float, dict[str, int]]:
    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    hostile = context.Process(target=_hostile_process, args=(phase, count, url, stop, results))
    hostile.start()
    try:
        time.sleep(2.0)  # the hostile connections are open before the light client starts
        samples, seconds = asyncio.run(_light(url, texts, options))
    finally:
        stop.set()
        outcomes: dict[str, int] = results.get(timeout=60)
        hostile.join(30)
    return samples, seconds, outcomes


def run_hostile_clients(
    options: HostileOptions, command: str, progress: Callable[[str], None] = print
) -> tuple[dict[str, object], dict[str, list[Sample]]]:
    texts = load_texts(options.data, options.texts)
    backbone = load_backbone(options.backbone)
    blob = random_memories(backbone, 1, options.seed, "hc", options.max_seq_length)[0].to_bytes()
    samples: dict[str, list[Sample]] = {}
    phases: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="spartan-hostile-") as tmp:
        settings = {
            "backbone": options.backbone,
            "registry_dir": str(Path(tmp) / "registry"),
            "threads": str(options.threads),
            **dict(options.server_settings),
        }
        progress(f"starting spartan serve ({options.backbone})")
        server = start_server(settings, Path(tmp) / "server.log")
        try:

            async def upload() -> None:
                async with AsyncSpartanClient(server.url) as client:
                    await client.put_memory(TASK, blob)

            asyncio.run(upload())
            for name, count in _counts(options).items():
                progress(f"phase {name}: {count} hostile connections, light {options.light_rate:g} req/s")
                light, seconds, outcomes = _phase(server.url, texts, options, name, count)
                samples[name] = light
                phases[name] = {
                    "hostile_connections": count,
                    "light": tenant_summary(light, seconds),
                    "server_did": dict(sorted(outcomes.items())),
                }
        finally:
            exit_reason = server.exit_reason()
            server.stop()
    report: dict[str, object] = {
        "phases": phases,
        "target": _target(phases),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        "server_settings": {k: v for k, v in settings.items() if k != "registry_dir"},
        "server_exit": exit_reason,
        "command": command,
        "machine": machine(),
    }
    return report, samples


def _target(phases: dict[str, dict[str, object]]) -> dict[str, object]:
    """Each phase's light p95 against 2x the normal phase's, and every light request answered 200."""

    def p95(phase: str) -> float | None:
        return phases[phase]["light"]["latency_s"]["p95"]  # type: ignore[index,no-any-return]

    normal = p95("normal")
    target: dict[str, object] = {"light_p95_normal_s": normal}
    met = normal is not None
    for phase in PHASES[1:]:
        value = p95(phase)
        statuses = phases[phase]["light"]["statuses"]  # type: ignore[index]
        ratio = value / normal if value is not None and normal else None
        ok = ratio is not None and ratio <= 2.0 and set(statuses) == {"200"}
        target[phase] = {"light_p95_s": value, "ratio": round(ratio, 3) if ratio else None, "met": ok}
        met = met and ok
    target["met"] = met
    return target


def plot_hostile(samples: dict[str, list[Sample]], title: str, path: Path) -> None:
    """The light client's p50 / p95 / p99 in each phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(PHASES)
    for i, phase in enumerate(PHASES):
        latencies = sorted(s.latency for s in samples.get(phase, []) if s.status == 200)
        values = [percentile(latencies, q) or 0.0 for q in (50, 95, 99)]
        axes.bar([j + width * i for j in range(3)], values, width=width, label=phase)
    axes.set_xticks([j + 0.4 - width / 2 for j in range(3)], ["p50", "p95", "p99"])
    axes.set(ylabel="latency (s)", title="the well-behaved client's latency per phase")
    axes.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    write_figure(figure, path, dpi=100)
    plt.close(figure)
