"""Start ``spartan serve`` as a child process on a free loopback port and wait until it is ready.

Used by ``spartan bench --http``, the multi-replica tests, the load test and the cgroup runner,
so every caller starts servers the same way: settings as ``SPARTAN_*`` environment variables,
output to a log file, ready when ``/readyz`` answers 200; optionally inside a cgroup with a
device profile's limits (loadtest.cgroup).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtest.cgroup import Confined, Limits, start_confined


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    confined: Confined | None = None  # set when the server runs inside its own cgroup

    def exit_reason(self) -> str | None:
        """None while running; else how it ended ('OOM-killed: ...' when over its memory limit)."""
        if self.confined is not None:
            return self.confined.exit_reason()
        code = self.process.poll()
        return None if code is None else f"exited with {code}"

    def pin(self, cpus: set[int]) -> None:
        """Restrict every current thread of the server to ``cpus`` (threads started later inherit it)."""
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), cpus)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (graceful: admitted requests finish), then wait; removes the cgroup if any."""
        if self.confined is not None:
            self.confined.stop(timeout)
            return
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout)


def is_ready(url: str) -> bool:
    """Whether the server at ``url`` answers ``/readyz`` with 200 now."""
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def start_server(
    settings: dict[str, str],
    log: Path,
    ready_timeout: float = 120.0,
    limits: Limits | None = None,
    port: int | None = None,
) -> ServerProcess:
    """Run ``spartan serve`` with ``settings`` (SPARTAN_* names without the prefix, e.g. BACKBONE),
    inside a cgroup with ``limits`` if given, on ``port`` (default: a free one)."""
    port = port or free_port()
    env = {
        **os.environ,
        "SPARTAN_DRAIN_S": "0",  # nothing balances load over a harness's server: stop at once unless asked
        **{f"SPARTAN_{k.upper()}": v for k, v in settings.items()},
        "SPARTAN_PORT": str(port),
    }
    command = [sys.executable, "-m", "service"]
    with log.open("wb") as out:
        if limits is None:
            server = ServerProcess(
                subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT),
                f"http://127.0.0.1:{port}",
                log,
            )
        else:
            confined = start_confined(command, limits, f"serve-{port}", env, out)
            server = ServerProcess(confined.process, f"http://127.0.0.1:{port}", log, confined)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if (reason := server.exit_reason()) is not None:
            server.stop()
            raise RuntimeError(f"spartan serve {reason}: {log.read_text()[-2000:]}")
        if is_ready(server.url):
            return server
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"spartan serve was not ready within {ready_timeout} s; see {log}")


def drop_redis_prefixes(url: str, prefixes: list[str]) -> None:
    """Remove the keys of the registries a run created (best effort: Redis may be gone)."""
    import redis

    if not prefixes:
        return
    try:
        client = redis.Redis.from_url(url)
        for prefix in prefixes:
            keys = list(client.scan_iter(f"{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
        client.close()
    except redis.RedisError:
        pass
