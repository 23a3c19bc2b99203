"""The cgroup runner on the real kernel: CPU quota, cpuset and memory limit (OOM reported as such)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path

import pytest

from loadtest.cgroup import CgroupV2, Confined, Limits, cgroup_version, confine_self, start_confined
from loadtest.errors import CgroupError
from loadtest.launcher import start_server

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or cgroup_version() is None, reason="needs root and a cgroup hierarchy"
)
_names = count()
Run = Callable[[str, Limits], Confined]


@pytest.fixture
def confine() -> Iterator[Run]:
    started: list[Confined] = []

    def run(code: str, limits: Limits) -> Confined:
        name = f"test-{os.getpid()}-{next(_names)}"
        confined = start_confined([sys.executable, "-c", code], limits, name, output=subprocess.PIPE)
        started.append(confined)
        return confined

    yield run
    for confined in started:
        confined.stop(timeout=10)


SPIN = """
import json, os, time
start, cpu = time.monotonic(), time.process_time()
while time.monotonic() - start < 2.0:
    pass
print(json.dumps({"cpu": time.process_time() - cpu, "wall": time.monotonic() - start,
                  "affinity": sorted(os.sched_getaffinity(0))}))
"""


def _cpu_share_and_affinity(confined: Confined) -> tuple[float, list[int]]:
    """(CPU seconds per wall second, allowed CPUs) reported by SPIN."""
    out, _ = confined.process.communicate(timeout=60)
    assert confined.exit_reason() == "exited with 0", out
    result = json.loads(out)
    return result["cpu"] / result["wall"], result["affinity"]


def test_cpu_quota_caps_cpu_time_and_cpuset_pins(confine: Run) -> None:
    share, affinity = _cpu_share_and_affinity(confine(SPIN, Limits(cpus=0.2, cpuset="0")))
    assert share < 0.3, f"a 0.2-core quota let the process use {share:.2f} of a core"
    assert affinity == [0]


def test_unconfined_spin_uses_more_than_the_quota(confine: Run) -> None:
    """The control for the test above: without a CPU quota the same loop gets more than 0.3 of a core."""
    share, _ = _cpu_share_and_affinity(confine(SPIN, Limits(memory_bytes=512 << 20)))
    assert share > 0.3


def test_memory_limit_violation_is_reported_as_oom_kill(confine: Run) -> None:
    confined = confine("blob = bytearray(400 << 20)\nprint('survived')", Limits(memory_bytes=64 << 20))
    out, _ = confined.process.communicate(timeout=60)
    assert b"survived" not in out
    reason = confined.exit_reason()
    assert reason is not None
    assert reason.startswith("OOM-killed"), reason


def test_within_the_memory_limit_nothing_is_killed(confine: Run) -> None:
    confined = confine("blob = bytearray(16 << 20)\nprint('survived')", Limits(memory_bytes=256 << 20))
    out, _ = confined.process.communicate(timeout=60)
    assert b"survived" in out
    assert confined.exit_reason() == "exited with 0"


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"cpus": 0}, "cpus must be between"),
        ({"cpuset": "first"}, "cpuset must look like"),
        ({"memory_bytes": 1024}, "at least 16 MiB"),
    ],
)
def test_bad_limits_are_refused_with_the_fix(limits: dict[str, object], message: str) -> None:
    with pytest.raises(CgroupError, match=message):
        Limits(**limits)  # type: ignore[arg-type]


def test_a_cgroup_name_cannot_walk_the_tree() -> None:
    with pytest.raises(CgroupError, match="cgroup name must match"):
        start_confined(["true"], Limits(cpus=0.5), "../escape")


def test_confine_self_applies_the_cpuset_and_moves_back() -> None:
    before = os.sched_getaffinity(0)
    with confine_self(Limits(cpus=0.5, cpuset="0"), f"test-self-{os.getpid()}") as cgroup:
        assert os.sched_getaffinity(0) == {0}
        assert all(str(os.getpid()) in procs.read_text().split() for procs in cgroup.procs_files)
    assert os.sched_getaffinity(0) == before
    assert not any(procs.exists() for procs in cgroup.procs_files), "the cgroup was removed"


def test_a_server_over_its_memory_budget_is_reported_oom_killed(tmp_path: Path) -> None:
    """spartan serve in too little memory ends as a reported OOM kill, not a hang."""
    settings = {"backbone": "roberta-tiny-random", "registry_dir": str(tmp_path / "registry")}
    limits = Limits(memory_bytes=48 << 20)
    with pytest.raises(RuntimeError, match="spartan serve OOM-killed"):
        start_server(settings, tmp_path / "serve.log", ready_timeout=120, limits=limits)


def test_cgroup_v2_writes_the_unified_interface(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This host has cgroup v1 only: the v2 writer runs against a directory laid out like cgroup2fs
    (the kernel creates the interface files itself; here they are pre-made)."""
    base = tmp_path / "cg"
    leaf = base / "spartan" / "probe"
    leaf.mkdir(parents=True)
    for folder in (base, base / "spartan"):
        (folder / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
        (folder / "cgroup.subtree_control").write_text("")
    (leaf / "memory.swap.max").write_text("max\n")
    monkeypatch.setattr("loadtest.cgroup.own_cgroup", lambda controller: base)
    cgroup = CgroupV2("probe", Limits(cpus=0.55, cpuset="0", memory_bytes=256 << 20))
    assert (leaf / "cpu.max").read_text() == "55000 100000"
    assert (leaf / "cpuset.cpus").read_text() == "0"
    assert (leaf / "memory.max").read_text() == str(256 << 20)
    assert (leaf / "memory.swap.max").read_text() == "0"
    assert (base / "cgroup.subtree_control").read_text() == "+cpu +cpuset +memory"
    assert cgroup.procs_files == [leaf / "cgroup.procs"]
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cgroup.oom_kills() == 1


def test_cgroup_v2_names_a_missing_controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu pids\n")
    monkeypatch.setattr("loadtest.cgroup.own_cgroup", lambda controller: tmp_path)
    with pytest.raises(CgroupError, match=r"controllers \['cpuset', 'memory'\] are not available"):
        CgroupV2("probe", Limits(cpus=0.5))
