"""What the CPU can do: its model, the instruction-set flags that decide which precision is fast,
and the kernel level torch dispatches to. Read once per call from /proc/cpuinfo (Linux)."""

from __future__ import annotations

import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass

# The flags that change which kernels (and so which precision) win on an x86 CPU.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # bf16 arithmetic units; without them bf16 is emulated, slowly


@dataclass(frozen=True)
class Cpu:
    model: str
    flags: tuple[str, ...]  # the SPEED_FLAGS this CPU has
    torch_capability: str  # torch.backends.cpu.get_cpu_capability(), e.g. AVX2, AVX512, ...

    @property
    def has_bf16_units(self) -> bool:
        return any(flag in self.flags for flag in BF16_FLAGS)

    @property
    def kind(self) -> str:
        """Model and speed flags, e.g. ``AMD EPYC [avx2 fma]``: a virtual CPU's model name alone
        does not say what it is (an AVX2-only EPYC and a Zen 4 EPYC both read "AMD EPYC")."""
        return cpu_kind(self.model, self.flags)


def cpu_kind(model: str, flags: Sequence[str]) -> str:
    return f"{model} [{' '.join(flags)}]"


def parse_cpu_kind(kind: str) -> tuple[str, tuple[str, ...]] | None:
    """(model, flags) of a :func:`cpu_kind` string; None for a bare model name (no flags known)."""
    match = re.fullmatch(r"(.*) \[([a-z0-9_ ]*)\]", kind)
    return (match[1], tuple(match[2].split())) if match else None


def _cpuinfo() -> tuple[str, list[str]]:
    """(model name, flags) from /proc/cpuinfo; the platform's processor string elsewhere."""
    model, flags = platform.processor(), []
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = value.split()
                    break
    except OSError:
        pass
    return model, flags


def cpu() -> Cpu:
    import torch

    model, flags = _cpuinfo()
    present = tuple(flag for flag in SPEED_FLAGS if flag in flags)
    return Cpu(model, present, torch.backends.cpu.get_cpu_capability())
