"""What a precision setting costs at start-up: a real ``spartan serve`` from process start to its
first ``/readyz`` 200, for each setting in interleaved repetitions.

Settings: a fixed mode (``fp32``, ``int8``, ``bf16``), ``auto`` on a fresh cache (it measures:
the first start on a host) and ``auto-cached`` (a start after one that decided: it reuses the
decision). The report gives every start's seconds, the median per setting, its difference to
``fp32``, and what ``/readyz`` said each time (mode, decision time, cached or not).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtest.errors import LoadTestError
from loadtest.launcher import start_server

SETTINGS = ("fp32", "int8", "bf16", "auto", "auto-cached")


@dataclass(frozen=True)
class StartupOptions:
    backbone: str = "minilm"
    settings: tuple[str, ...] = ("fp32", "auto", "auto-cached")
    reps: int = 2
    threads: int = 1
    seed_dir: Path | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.settings) - set(SETTINGS))
        if unknown or "fp32" not in self.settings:
            raise LoadTestError(
                f"settings must include fp32 and be among {', '.join(SETTINGS)}; got {unknown}"
            )
        if self.reps < 1:
            raise LoadTestError("reps must be >= 1")


def _start_once(options: StartupOptions, setting: str, workdir: Path, warm_cache: Path) -> dict[str, object]:
    """One start of the server with ``setting``; its seconds to ready and /readyz's precision block."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        cache = warm_cache if setting == "auto-cached" else Path(tmp) / "cache"
        env = {
            "backbone": options.backbone,
            "precision": "auto" if setting.startswith("auto") else setting,
            "threads": str(options.threads),
            "registry_dir": f"{tmp}/registry",
            "cache_dir": str(cache),
        }
        if options.seed_dir is not None:
            env["seed_dir"] = str(options.seed_dir.resolve())
        started = time.perf_counter()
        server = start_server(env, Path(tmp) / "server.log", ready_timeout=600)
        seconds = time.perf_counter() - started
        try:
            precision = httpx.get(f"{server.url}/readyz", timeout=10).json()["precision"]
        finally:
            server.stop()
    return {
        "seconds": round(seconds, 2),
        "mode": precision["mode"],
        "decided_in_s": precision["decided_in_s"],
        "cached": precision["cached"],
    }


def run_startup(options: StartupOptions, progress: Callable[[str], None] = print) -> dict[str, object]:
    starts: dict[str, list[dict[str, object]]] = {setting: [] for setting in options.settings}
    with tempfile.TemporaryDirectory(prefix="spartan-startup-") as workdir:
        warm = Path(workdir) / "warm-cache"
        if "auto-cached" in options.settings:
            progress("one auto start to fill the cache that auto-cached reuses")
            _start_once(options, "auto-cached", Path(workdir), warm)  # empty yet: it measures, then keeps
        for rep in range(options.reps):
            for setting in _rotated(options.settings, rep):
                start = _start_once(options, setting, Path(workdir), warm)
                starts[setting].append(start)
                progress(
                    f"rep {rep + 1}/{options.reps}: {setting} ready in {start['seconds']} s ({start['mode']})"
                )
    median = {s: statistics.median(float(str(x["seconds"])) for x in runs) for s, runs in starts.items()}
    return {
        "backbone": options.backbone,
        "threads": options.threads,
        "seed_dir": str(options.seed_dir) if options.seed_dir else None,
        "starts": starts,
        "median_seconds": {s: round(v, 2) for s, v in median.items()},
        "over_fp32_seconds": {s: round(v - median["fp32"], 2) for s, v in median.items()},
    }


def _rotated(settings: Sequence[str], rep: int) -> list[str]:
    """The settings in a different order every repetition (a slow drift hits each alike)."""
    shift = rep % len(settings)
    return [*settings[shift:], *settings[:shift]]
