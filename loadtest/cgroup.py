"""Run a process inside a cgroup with a CPU quota, a cpuset and a memory limit (cgroup v1 and v2).

This is the device emulation without a container engine: ``spartan loadtest serve --profile
raspi4`` and the load test start ``spartan serve`` through :func:`start_confined`. Needs root and
writable controllers (``cpu``, ``cpuset``, ``memory``); each missing piece raises
:class:`~loadtest.errors.CgroupError` saying which.

A process that exceeds the memory limit is killed by the kernel's OOM killer;
:meth:`Confined.exit_reason` reports that as such (from the cgroup's ``oom_kill`` counter), so a
memory budget that is too small shows up as an OOM kill, not as a hang or a bare "killed".
No swap: where the kernel offers a swap limit it is set to the memory limit (v1 ``memsw``) or 0 (v2).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from loadtest.errors import CgroupError
from service.cpu import CGROUP_ROOT, own_cgroup

PERIOD_US = 100_000
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Limits:
    """A budget; None leaves that resource unlimited."""

    cpus: float | None = None  # CPU quota in cores, e.g. 0.55 = 55 ms of CPU per 100 ms
    cpuset: str | None = None  # CPUs the process may run on, e.g. "0" or "0-1"
    memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.cpus is not None and not 0.01 <= self.cpus <= 1024:
            raise CgroupError(f"cpus must be between 0.01 and 1024 cores, got {self.cpus}")
        if self.cpuset is not None and not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", self.cpuset):
            raise CgroupError(f"cpuset must look like '0' or '0-1,3', got {self.cpuset!r}")
        if self.memory_bytes is not None and self.memory_bytes < 16 << 20:
            raise CgroupError(f"memory limit must be at least 16 MiB, got {self.memory_bytes} bytes")


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror}") from None


def _counter(path: Path, key: str) -> int:
    """``key N`` from a flat-keyed cgroup file (memory.events, memory.oom_control); 0 if absent."""
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


class Cgroup(ABC):
    """One leaf cgroup that this process created; :meth:`remove` deletes it."""

    @property
    @abstractmethod
    def procs_files(self) -> list[Path]:
        """Files a process writes its pid to in order to join (one per v1 hierarchy)."""

    @abstractmethod
    def oom_kills(self) -> int:
        """Processes of this cgroup the OOM killer has killed."""

    @abstractmethod
    def memory_peak(self) -> int | None:
        """Most memory the cgroup has used, in bytes, where the kernel reports it."""

    @abstractmethod
    def remove(self) -> None:
        """Delete the cgroup (its processes must have exited)."""

    def add(self, pid: int) -> None:
        for procs in self.procs_files:
            _write(procs, str(pid))


class CgroupV1(Cgroup):
    """One directory per controller under this process's own cgroup, in a ``spartan`` folder."""

    def __init__(self, name: str, limits: Limits) -> None:
        self.dirs: dict[str, Path] = {}
        wanted = ["cpu"] if limits.cpus is not None else []
        wanted += ["cpuset"] if limits.cpuset is not None else []
        wanted += ["memory"] if limits.memory_bytes is not None else []
        try:
            for controller in wanted:
                self.dirs[controller] = self._make(controller, name)
            if limits.cpus is not None:
                _write(self.dirs["cpu"] / "cpu.cfs_period_us", str(PERIOD_US))
                _write(self.dirs["cpu"] / "cpu.cfs_quota_us", str(round(limits.cpus * PERIOD_US)))
            if limits.cpuset is not None:
                _write(self.dirs["cpuset"] / "cpuset.cpus", limits.cpuset)
            if limits.memory_bytes is not None:
                memory = self.dirs["memory"]
                _write(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
                if (memory / "memory.memsw.limit_in_bytes").exists():
                    _write(memory / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        except CgroupError:
            self.remove()
            raise

    @staticmethod
    def _make(controller: str, name: str) -> Path:
        base = own_cgroup(controller)
        if base is None or not (base / "cgroup.procs").exists():
            raise CgroupError(f"the cgroup v1 '{controller}' controller is not mounted at {CGROUP_ROOT}")
        parent = base / "spartan"
        for folder in (parent, parent / name):
            try:
                folder.mkdir(exist_ok=True)
            except OSError as exc:
                raise CgroupError(f"cannot create cgroup {folder}: {exc.strerror}") from None
            if controller == "cpuset":  # a v1 cpuset starts empty: inherit CPUs and memory nodes
                for key in ("cpuset.cpus", "cpuset.mems"):
                    if not (folder / key).read_text().strip():
                        _write(folder / key, (folder.parent / key).read_text().strip())
        return parent / name

    @property
    def procs_files(self) -> list[Path]:
        return [folder / "cgroup.procs" for folder in self.dirs.values()]

    def oom_kills(self) -> int:
        memory = self.dirs.get("memory")
        return _counter(memory / "memory.oom_control", "oom_kill") if memory else 0

    def memory_peak(self) -> int | None:
        memory = self.dirs.get("memory")
        with contextlib.suppress(OSError):
            return int((memory / "memory.max_usage_in_bytes").read_text()) if memory else None
        return None

    def remove(self) -> None:
        for folder in self.dirs.values():
            with contextlib.suppress(OSError):
                folder.rmdir()


class CgroupV2(Cgroup):
    """A leaf under ``<own cgroup>/spartan`` with the cpu, cpuset and memory controllers enabled."""

    def __init__(self, name: str, limits: Limits) -> None:
        base = own_cgroup("")
        if base is None:
            raise CgroupError("this process is in no cgroup v2 hierarchy")
        self.dir = base / "spartan" / name
        try:
            self._enable_controllers(base)
            (base / "spartan").mkdir(exist_ok=True)
            self._enable_controllers(base / "spartan")
            self.dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise CgroupError(f"cannot create cgroup {self.dir}: {exc.strerror}") from None
        try:
            if limits.cpus is not None:
                _write(self.dir / "cpu.max", f"{round(limits.cpus * PERIOD_US)} {PERIOD_US}")
            if limits.cpuset is not None:
                _write(self.dir / "cpuset.cpus", limits.cpuset)
            if limits.memory_bytes is not None:
                _write(self.dir / "memory.max", str(limits.memory_bytes))
                if (self.dir / "memory.swap.max").exists():
                    _write(self.dir / "memory.swap.max", "0")
        except CgroupError:
            self.remove()
            raise

    @staticmethod
    def _enable_controllers(folder: Path) -> None:
        missing = {"cpu", "cpuset", "memory"} - set((folder / "cgroup.controllers").read_text().split())
        if missing:
            raise CgroupError(f"cgroup v2 controllers {sorted(missing)} are not available in {folder}")
        _write(folder / "cgroup.subtree_control", "+cpu +cpuset +memory")

    @property
    def procs_files(self) -> list[Path]:
        return [self.dir / "cgroup.procs"]

    def oom_kills(self) -> int:
        return _counter(self.dir / "memory.events", "oom_kill")

    def memory_peak(self) -> int | None:
        with contextlib.suppress(OSError):
            return int((self.dir / "memory.peak").read_text())
        return None

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.dir.rmdir()


def cgroup_version() -> int | None:
    """2 on a unified hierarchy, 1 where the v1 cpu controller is mounted, else None."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return 2
    if (CGROUP_ROOT / "cpu" / "cgroup.procs").exists():
        return 1
    return None


def create_cgroup(name: str, limits: Limits) -> Cgroup:
    if not _NAME.match(name):
        raise CgroupError(f"cgroup name must match {_NAME.pattern}, got {name!r}")
    if os.geteuid() != 0:
        raise CgroupError("creating a cgroup needs root; run as root or use the compose profiles")
    version = cgroup_version()
    if version == 2:
        return CgroupV2(name, limits)
    if version == 1:
        return CgroupV1(name, limits)
    raise CgroupError(f"no cgroup hierarchy found at {CGROUP_ROOT}")


@dataclass
class Confined:
    """A child process running inside its own cgroup."""

    process: subprocess.Popen[bytes]
    cgroup: Cgroup

    def exit_reason(self) -> str | None:
        """None while running; else 'exited with N', 'killed by SIGNAME' or 'OOM-killed (...)'."""
        code = self.process.poll()
        if code is None:
            return None
        if self.cgroup.oom_kills():
            peak = self.cgroup.memory_peak()
            seen = f", peak {peak >> 20} MiB" if peak is not None else ""
            return f"OOM-killed: the process exceeded the cgroup memory limit{seen}"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exited with {code}"

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM, wait (SIGKILL after ``timeout``), then delete the cgroup."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.cgroup.remove()


def start_confined(
    command: Sequence[str],
    limits: Limits,
    name: str,
    env: Mapping[str, str] | None = None,
    output: IO[bytes] | int | None = None,
) -> Confined:
    """Start ``command`` inside a new cgroup: a shell joins the cgroup, then execs the command,
    so every byte and CPU-second of the command is accounted to the cgroup from its first instruction."""
    cgroup = create_cgroup(name, limits)
    join = "; ".join(f"echo $$ > '{path}'" for path in cgroup.procs_files)
    try:
        process = subprocess.Popen(
            ["/bin/sh", "-c", f'set -e; {join}; exec "$@"', "spartan-confined", *command],
            env=dict(env) if env is not None else None,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
        )
    except OSError:
        cgroup.remove()
        raise
    return Confined(process, cgroup)


@contextlib.contextmanager
def confine_self(limits: Limits, name: str) -> Iterator[Cgroup]:
    """Run the body with this whole process (every thread) inside a new cgroup, then move back.

    For in-process measurements under a budget (``spartan loadtest calibrate``): the model is
    loaded once, outside, and each probe runs confined.
    """
    versions = ["cpu", "cpuset", "memory"] if cgroup_version() == 1 else [""]
    home = [own_cgroup(controller) for controller in versions]
    cgroup = create_cgroup(name, limits)
    try:
        cgroup.add(os.getpid())
        yield cgroup
    finally:
        for folder in home:
            if folder is not None and (folder / "cgroup.procs").exists():
                _write(folder / "cgroup.procs", str(os.getpid()))
        cgroup.remove()
