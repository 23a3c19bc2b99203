"""Start ``spartan serve`` as a child process on a free loopback port and wait until it is ready.

Used by ``spartan bench --http``, the multi-replica tests and (later) the load test, so every
caller starts servers the same way: settings as ``SPARTAN_*`` environment variables, output to a
log file, ready when ``/readyz`` answers 200.
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

    def pin(self, cpus: set[int]) -> None:
        """Restrict every current thread of the server to ``cpus`` (threads started later inherit it)."""
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), cpus)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (graceful: admitted requests finish), then wait."""
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout)


def start_server(settings: dict[str, str], log: Path, ready_timeout: float = 120.0) -> ServerProcess:
    """Run ``spartan serve`` with ``settings`` (SPARTAN_* names without the prefix, e.g. BACKBONE)."""
    port = free_port()
    env = {
        **os.environ,
        **{f"SPARTAN_{k.upper()}": v for k, v in settings.items()},
        "SPARTAN_PORT": str(port),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "memories.cli", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"spartan serve exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"spartan serve was not ready within {ready_timeout} s; see {log}")
