"""Thread policy: torch threads follow the cgroup CPU quota and the cpuset (real cgroups, child processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.cgroup import Limits, cgroup_version, start_confined
from service.cpu import available_cpus, cpu_quota

PROBE = (
    "import json; from service.cpu import available_cpus, cpu_quota; "
    "print(json.dumps([cpu_quota(), available_cpus()]))"
)
CPUS = len(os.sched_getaffinity(0))


@pytest.mark.skipif(os.geteuid() != 0 or cgroup_version() is None, reason="needs root and a cgroup hierarchy")
@pytest.mark.parametrize(
    ("limits", "quota", "threads"),
    [
        (Limits(cpus=0.5, cpuset="0"), 0.5, 1),  # a Pi-4-like budget: one thread
        (Limits(cpus=1.5), 1.5, min(2, CPUS)),  # a fractional quota rounds up, capped by the CPUs
        (Limits(cpuset="0"), None, 1),  # no quota: the cpuset decides
        (Limits(memory_bytes=256 << 20), None, CPUS),  # neither: every CPU this process may use
    ],
)
def test_threads_follow_the_quota_and_the_cpuset(limits: Limits, quota: float | None, threads: int) -> None:
    confined = start_confined(
        [sys.executable, "-c", PROBE], limits, f"cpu-test-{os.getpid()}", output=subprocess.PIPE
    )
    try:
        out, _ = confined.process.communicate(timeout=60)
    finally:
        confined.stop(timeout=10)
    assert json.loads(out) == [quota, threads]


def test_cgroup_v2_quota_is_read_from_cpu_max(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    monkeypatch.setattr("service.cpu.own_cgroup", lambda controller: tmp_path if controller == "" else None)
    assert cpu_quota() == 1.5
    assert available_cpus() == min(2, CPUS)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_quota() is None
