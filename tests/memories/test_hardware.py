"""The CPU kind string: what a calibration or a precision decision is keyed to, and its parse."""

from __future__ import annotations

from memories.hardware import Cpu, cpu, cpu_kind, parse_cpu_kind


def test_a_kind_names_the_model_the_generation_and_the_speed_flags() -> None:
    zen5 = Cpu("AMD EPYC", ("avx2", "avx512_bf16"), "AVX512", "family 26 model 2")
    assert zen5.kind == "AMD EPYC (family 26 model 2) [avx2 avx512_bf16]"
    assert parse_cpu_kind(zen5.kind) == ("AMD EPYC", "family 26 model 2", ("avx2", "avx512_bf16"))
    assert zen5.has_bf16_units


def test_kinds_recorded_before_the_generation_and_before_the_flags_still_parse() -> None:
    assert parse_cpu_kind(cpu_kind("AMD EPYC", ("avx2", "fma"))) == ("AMD EPYC", "", ("avx2", "fma"))
    assert parse_cpu_kind("Intel(R) Xeon(R) Processor [amx_bf16]") == (
        "Intel(R) Xeon(R) Processor",
        "",
        ("amx_bf16",),
    )
    assert parse_cpu_kind("AMD EPYC") is None, "a bare model name: nothing known beyond the name"


def test_this_host_reads_as_a_kind_that_parses_back() -> None:
    here = cpu()
    assert here.model, "every platform has some processor name"
    parsed = parse_cpu_kind(here.kind)
    assert parsed == (here.model, here.signature, here.flags)
