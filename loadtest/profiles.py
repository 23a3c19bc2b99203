"""Edge device profiles (raspi4, iphone) read from and written back to ``loadtest/profiles.yml``.

The file is in Compose's own service format so that ``docker-compose.yml`` extends it directly
(``extends: {file: loadtest/profiles.yml, service: raspi4}``): compose, the cgroup runner and the
load test read the same numbers and nothing copies them. Paper facts live under ``x-device``
(Compose ignores ``x-`` fields); the emulation budget is the Compose fields ``cpus``, ``cpuset``,
``mem_limit`` and ``environment.SPARTAN_THREADS``.

A CPU quota only emulates a device on the CPU it was measured on. The file records one host's
quota as Compose's ``cpus: ${SPARTAN_<PROFILE>_CPUS:-<recorded quota>}``: on another host,
``spartan loadtest calibrate --env-file .env`` writes that variable and the CPU it was measured
on (``SPARTAN_<PROFILE>_CPUS_MEASURED_ON``) into the ``.env`` file of the project directory.
``docker compose`` reads ``.env`` by itself; :func:`load_profile` reads the same variables (the
process environment first, then ``.env`` in the current directory), so Compose, the cgroup runner
and the load test apply one quota, and the recorded value is the documented fallback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from dotenv import dotenv_values, set_key
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, model_validator

from loadtest.cgroup import Limits
from loadtest.errors import LoadTestError
from memories.atomic import atomic_write
from memories.hardware import Cpu, cpu_kind, parse_cpu_kind
from memories.precision import PRECISIONS, Precision

PROFILES_FILE = Path(__file__).resolve().parent / "profiles.yml"

# What `spartan loadtest probe` can run beside the bare backbone.
VARIANTS = ("bare", "spartan", "pfeiffer", "houlsby")

# The paper's Table 1 (inst/min, RoBERTa-base, batch 32), per device profile and variant.
PAPER_TABLE1: dict[str, dict[str, float]] = {
    "raspi4": {"bare": 207.6, "pfeiffer": 20.0, "houlsby": 19.5, "spartan": 201.3},
    "iphone": {"bare": 366.2, "pfeiffer": 216.1, "houlsby": 204.8, "spartan": 332.6},
}
HEADER = """\
# Edge device profiles: the one source of truth for docker-compose.yml (services extend these),
# the cgroup runner and the load test (loadtest/profiles.py). `spartan loadtest calibrate`
# rewrites `cpus` and `x-device.calibration`; comments in this file are not kept.
"""
_MEMORY = re.compile(r"^(\d+)([kmg])$")
_QUOTA = re.compile(r"^\$\{(SPARTAN_[A-Z0-9_]+_CPUS):-([0-9.]+)\}$")
ENV_FILE = Path(".env")  # where docker compose looks: the project directory (the current one)


class Calibration(BaseModel):
    """How ``cpus`` was found: the bare backbone's measured throughput at that quota, and where."""

    model_config = ConfigDict(extra="forbid")

    measured_inst_per_min: float
    backbone: str
    batch_size: int
    seq_length: int
    host: str  # "<hostname>: <cpu model>"
    date: str
    command: str
    cpu: str | None = None  # the CPU model the quota was measured on (older records: in ``host``)
    cpu_flags: list[str] = []
    cpu_signature: str = ""  # "family 25 model 17" (older records: not recorded)

    @property
    def cpu_model(self) -> str:
        return self.cpu if self.cpu is not None else self.host.split(": ", 1)[-1]

    @property
    def cpu_kind(self) -> str:
        return (
            cpu_kind(self.cpu_model, self.cpu_flags, self.cpu_signature) if self.cpu_flags else self.cpu_model
        )


class Device(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    paper_cores: int
    paper_memory_gb: int
    reference_inst_per_min: float = Field(gt=0)
    reference: str
    precision_why: str = Field(description="why the profile runs the precision in its environment")
    calibration: Calibration | None = None


class Profile(BaseModel):
    """One profile as Compose sees it, plus the paper facts under ``x-device``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    device: Device = Field(alias="x-device")
    cpus: float = Field(gt=0, description="CPU quota in cores (CFS quota / period), as recorded")
    cpuset: str = Field(pattern=r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
    mem_limit: str = Field(pattern=_MEMORY.pattern)
    environment: dict[str, str]

    cpus_variable: str | None = Field(
        None,
        exclude=True,
        pattern=r"^SPARTAN_[A-Z0-9_]+_CPUS$",
        description="where a host's own quota is read (None: a plain ``cpus`` in the file, no override)",
    )

    @model_validator(mode="before")
    @classmethod
    def _split_quota(cls, data: Any) -> Any:
        """``cpus: ${SPARTAN_<PROFILE>_CPUS:-0.5}`` in the file: the variable, and the recorded
        quota as its fallback."""
        match = (
            _QUOTA.match(data["cpus"])
            if isinstance(data, dict) and isinstance(data.get("cpus"), str)
            else None
        )
        if match is None:
            return data
        return {**data, "cpus": match.group(2), "cpus_variable": match.group(1)}

    @field_serializer("cpus")
    def _as_compose_variable(self, cpus: float) -> str | float:
        return cpus if self.cpus_variable is None else f"${{{self.cpus_variable}:-{cpus:g}}}"

    @property
    def memory_bytes(self) -> int:
        match = _MEMORY.match(self.mem_limit)
        assert match is not None, "validated by the field pattern"
        return int(match.group(1)) << {"k": 10, "m": 20, "g": 30}[match.group(2)]

    @property
    def threads(self) -> int:
        return int(self.environment.get("SPARTAN_THREADS", "1"))

    @property
    def precision(self) -> Precision:
        """The precision the real device would run (never ``auto``: this host's units are not its)."""
        value = self.environment.get("SPARTAN_PRECISION", "fp32")
        assert value in PRECISIONS, f"SPARTAN_PRECISION of a profile must be one of {PRECISIONS}"
        return value  # type: ignore[return-value]

    def check_host(self, name: str, host: Cpu) -> None:
        """Refuse to emulate the device with a quota measured on another kind of CPU: another
        model, or the same model name with another generation or other speed flags (it would be
        off by the CPUs' speed ratio, e.g. 2.16x on a Xeon with a quota from an EPYC)."""
        calibration = self.device.calibration
        recalibrate = f"run 'spartan loadtest calibrate --profile {name}' on this host first"
        if calibration is None:
            raise LoadTestError(
                f"profile {name!r} has no calibration; run 'spartan loadtest calibrate --profile {name}' here"
            )
        if (
            calibration.cpu_model != host.model
            or (calibration.cpu_flags and set(calibration.cpu_flags) != set(host.flags))
            or (calibration.cpu_signature and calibration.cpu_signature != host.signature)
        ):
            raise LoadTestError(
                f"profile {name!r} was calibrated on {calibration.cpu_kind!r}, this host is {host.kind!r}: "
                f"its CPU quota would not emulate the device here; {recalibrate}"
            )
        unknown = [
            what
            for what, known in (
                ("speed flags", calibration.cpu_flags),
                ("generation (family, model)", calibration.cpu_signature),
            )
            if not known
        ]
        if unknown:
            raise LoadTestError(
                f"profile {name!r} was calibrated on {calibration.cpu_kind!r} whose {' and '.join(unknown)} "
                f"were not recorded, and CPUs of one model name differ ({host.kind!r} here); {recalibrate}"
            )

    @property
    def limits(self) -> Limits:
        return Limits(cpus=self.cpus, cpuset=self.cpuset, memory_bytes=self.memory_bytes)


def load_profiles(path: Path = PROFILES_FILE) -> dict[str, Profile]:
    try:
        raw = yaml.safe_load(path.read_text())
        return {name: Profile.model_validate(body) for name, body in raw["services"].items()}
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValidationError) as exc:
        raise LoadTestError(f"cannot read device profiles from {path}: {exc}") from None


def load_profile(
    name: str, path: Path = PROFILES_FILE, env: Mapping[str, str | None] | None = None
) -> Profile:
    """Profile ``name`` with this host's quota where ``env`` has one (default: the process
    environment, then ``.env`` in the current directory, as Compose reads them)."""
    profile = pick_profile(load_profiles(path), name, path)
    if profile.cpus_variable is None:
        return profile
    env = host_env() if env is None else env
    value = env.get(profile.cpus_variable)
    if not value:
        return profile
    try:
        cpus = float(value)
    except ValueError:
        raise LoadTestError(f"{profile.cpus_variable}={value!r} is not a number of cores") from None
    measured_on = env.get(f"{profile.cpus_variable}_MEASURED_ON")
    calibration = profile.device.calibration
    if calibration is None or not measured_on:
        raise LoadTestError(
            f"{profile.cpus_variable} is set but {profile.cpus_variable}_MEASURED_ON is not: the quota "
            f"cannot be checked against this CPU; run 'spartan loadtest calibrate --profile {name} "
            f"--env-file .env' here"
        )
    model, signature, flags = parse_cpu_kind(measured_on) or (measured_on, "", ())  # a bare model name
    here = calibration.model_copy(
        update={
            "cpu": model,
            "cpu_signature": signature,
            "cpu_flags": list(flags),
            "host": f"{ENV_FILE}: {measured_on}",
        }
    )
    return profile.model_copy(
        update={"cpus": cpus, "device": profile.device.model_copy(update={"calibration": here})}
    )


def host_env(env_file: Path = ENV_FILE) -> dict[str, str | None]:
    """The variables a host's quotas come from: ``env_file`` overridden by the process environment."""
    return {**dotenv_values(env_file), **os.environ}


def write_host_quota(env_file: Path, name: str, profile: Profile, cpus: float, host: Cpu) -> None:
    """Record this host's quota of profile ``name`` in ``env_file`` (other lines are kept)."""
    if profile.cpus_variable is None:
        raise LoadTestError(
            f"profile {name!r} has a plain cpus in its file; write it as cpus: ${{SPARTAN_"
            f"{name.upper()}_CPUS:-{profile.cpus:g}}} to let a host set its own quota"
        )
    env_file.touch(exist_ok=True)
    set_key(env_file, profile.cpus_variable, f"{cpus:g}", quote_mode="never")
    set_key(env_file, f"{profile.cpus_variable}_MEASURED_ON", host.kind, quote_mode="always")


def pick_profile(profiles: dict[str, Profile], name: str, path: Path = PROFILES_FILE) -> Profile:
    """``profiles[name]``, or an error naming the profiles ``path`` defines."""
    if name not in profiles:
        raise LoadTestError(f"unknown profile {name!r}; {path} defines: {', '.join(sorted(profiles))}")
    return profiles[name]


def save_profiles(profiles: dict[str, Profile], path: Path = PROFILES_FILE) -> None:
    body = {
        "services": {
            name: profile.model_dump(by_alias=True, mode="json") for name, profile in sorted(profiles.items())
        }
    }
    text = HEADER + yaml.safe_dump(body, sort_keys=False, default_flow_style=False)
    atomic_write(path, text.encode())
