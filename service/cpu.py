"""How many CPUs this process may really use: cpuset/affinity and the cgroup CPU quota (v1 and v2).

PyTorch picks its thread count from the host's cores and ignores a container's quota; the
engine sets torch threads from :func:`available_cpus` instead, unless a setting overrides it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def read_value(path: Path) -> str | None:
    """A cgroup or /proc file's stripped text; None when it cannot be read."""
    try:
        return path.read_text().strip()
    except OSError:
        return None


def own_cgroup(controller: str) -> Path | None:
    """This process's cgroup directory for a v1 controller (or the v2 unified one: '')."""
    text = read_value(Path("/proc/self/cgroup"))
    if text is None:
        return None
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        if (controller and controller in controllers.split(",")) or (not controller and controllers == ""):
            base = CGROUP_ROOT / controller if controller else CGROUP_ROOT
            return base / path.lstrip("/")
    return None


def cpu_quota() -> float | None:
    """CPUs allowed by the cgroup quota (e.g. 0.55), or None when unlimited/unknown."""
    v2 = own_cgroup("")
    if v2 is not None and (raw := read_value(v2 / "cpu.max")) is not None:
        quota, period = raw.split()
        return None if quota == "max" else int(quota) / int(period)
    v1 = own_cgroup("cpu")
    if v1 is not None:
        quota_raw, period_raw = read_value(v1 / "cpu.cfs_quota_us"), read_value(v1 / "cpu.cfs_period_us")
        if quota_raw and period_raw and int(quota_raw) > 0:
            return int(quota_raw) / int(period_raw)
    return None


def available_cpus() -> int:
    """Threads worth running: the affinity set, capped by the quota rounded up; at least 1."""
    cpus = len(os.sched_getaffinity(0))
    quota = cpu_quota()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)
