"""What the CPU can do: its model, its generation (family and model numbers), the instruction-set
flags that decide which precision is fast, and the kernel level torch dispatches to. Read once per
call from /proc/cpuinfo (Linux)."""

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
    signature: str = ""  # "family 26 model 2": the generation behind a virtual CPU's model name

    @property
    def has_bf16_units(self) -> bool:
        return any(flag in self.flags for flag in BF16_FLAGS)

    @property
    def kind(self) -> str:
        """Model, generation and speed flags, e.g. ``AMD EPYC (family 26 model 2) [avx2 fma ...]``.
        A virtual CPU's model name alone does not say what it is: AVX2-only, Zen 4 and Zen 5 EPYCs
        all read "AMD EPYC", and Zen 4 and Zen 5 have the same speed flags."""
        return cpu_kind(self.model, self.flags, self.signature)


def cpu_kind(model: str, flags: Sequence[str], signature: str = "") -> str:
    generation = f" ({signature})" if signature else ""
    return f"{model}{generation} [{' '.join(flags)}]"


def parse_cpu_kind(kind: str) -> tuple[str, str, tuple[str, ...]] | None:
    """(model, signature, flags) of a :func:`cpu_kind` string (signature "" when the string has
    none); None for a bare model name (no flags known)."""
    match = re.fullmatch(r"(.*?)(?: \((family \d+ model \d+)\))? \[([a-z0-9_ ]*)\]", kind)
    return (match[1], match[2] or "", tuple(match[3].split())) if match else None


def _cpuinfo() -> tuple[str, str, list[str]]:
    """(model name, signature, flags) of the first CPU in /proc/cpuinfo; the platform's processor
    string, no signature and no flags elsewhere."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if not key.strip():  # the blank line after the first CPU
                    break
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    family, number = fields.get("cpu family"), fields.get("model")
    known = bool(
        family and number and family.isdigit() and number.isdigit()
    )  # what parse_cpu_kind reads back
    signature = f"family {family} model {number}" if known else ""
    return fields.get("model name", platform.processor()), signature, fields.get("flags", "").split()


def cpu() -> Cpu:
    import torch

    model, signature, flags = _cpuinfo()
    present = tuple(flag for flag in SPEED_FLAGS if flag in flags)
    return Cpu(model, present, torch.backends.cpu.get_cpu_capability(), signature)
