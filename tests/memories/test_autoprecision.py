"""precision auto: checks every candidate against fp32, times the passing ones, falls back to fp32."""

from __future__ import annotations

from pathlib import Path

import pytest

from memories.autoprecision import Thresholds, decide, random_probe_memory
from memories.backbone import Backbone
from memories.backbones import load_backbone
from memories.hardware import Cpu
from tests.conftest import make_memfile

AVX2 = Cpu("test cpu without bf16 units", ("avx2", "fma"), "AVX2")
AMX = Cpu("test cpu with bf16 units", ("avx2", "avx512f", "amx_bf16"), "AMX")


def _quiet(message: str) -> None:
    del message


def _load() -> Backbone:
    return load_backbone("roberta-tiny-random")


def test_auto_times_the_passing_modes_and_keeps_the_fastest() -> None:
    fp32 = _load()
    memories = [make_memfile(fp32, seed=s).to_packed() for s in range(2)]
    chosen, decision = decide(fp32, memories, batch_size=4, seq_length=16, host=AMX, log=_quiet)
    by_mode = {c.mode: c for c in decision.candidates}
    assert set(by_mode) == {"fp32", "bf16", "int8"}
    timed = {m: c.seconds_per_batch for m, c in by_mode.items() if c.passed}
    assert all(seconds is not None and seconds > 0 for seconds in timed.values()), (
        "every passing mode is timed"
    )
    fp32_seconds = timed["fp32"] or 0.0
    faster = {m: t or 0.0 for m, t in timed.items() if m == "fp32" or fp32_seconds / (t or 1.0) >= 1.1}
    assert decision.chosen == min(faster, key=lambda m: faster[m]), "the fastest mode 10% ahead of fp32 wins"
    assert chosen.precision == decision.chosen
    assert chosen.fingerprint == fp32.fingerprint
    assert decision.probe_shape == (4, 16)
    assert decision.cpu_flags == list(AMX.flags)


def test_auto_skips_bf16_without_bf16_units() -> None:
    fp32 = _load()
    _, decision = decide(fp32, [random_probe_memory(fp32)], 2, 16, host=AVX2, log=_quiet)
    bf16 = next(c for c in decision.candidates if c.mode == "bf16")
    assert not bf16.passed
    assert bf16.seconds_per_batch is None
    assert bf16.reason.startswith("skipped: no bf16 units")


def test_auto_falls_back_to_fp32_when_every_candidate_fails() -> None:
    fp32 = _load()
    impossible = Thresholds(parent_agreement=1.01)  # no mode but fp32 itself can pass
    memory = make_memfile(fp32).to_packed()
    chosen, decision = decide(fp32, [memory], 2, 16, thresholds=impossible, host=AMX, log=_quiet)
    assert chosen is fp32
    assert decision.chosen == "fp32"
    failed = [c for c in decision.candidates if c.mode != "fp32"]
    assert failed
    assert all(not c.passed and "parent agreement" in c.reason for c in failed)


def test_auto_needs_an_fp32_backbone_and_a_memory() -> None:
    fp32 = _load()
    with pytest.raises(AssertionError, match="at least one memory"):
        decide(fp32, [], log=_quiet)
    chosen, _ = decide(fp32, [random_probe_memory(fp32)], 2, 16, host=AVX2, log=_quiet)
    if chosen is not fp32:
        with pytest.raises(AssertionError, match="starts from the fp32 backbone"):
            decide(chosen, [random_probe_memory(fp32)], log=_quiet)


def test_a_decision_is_kept_per_backbone_and_host_and_reused(tmp_path: Path) -> None:
    fp32 = _load()
    memory = [make_memfile(fp32).to_packed()]
    first, measured = decide(fp32, memory, 2, 16, host=AVX2, log=_quiet, cache_dir=tmp_path)
    assert not measured.cached
    assert len(list((tmp_path / "precision").glob("*.json"))) == 1
    again, reused = decide(_load(), memory, 2, 16, host=AVX2, log=_quiet, cache_dir=tmp_path)
    assert reused.cached
    assert (reused.chosen, again.precision) == (measured.chosen, first.precision)
    assert reused.candidates == measured.candidates
    _, other_host = decide(_load(), memory, 2, 16, host=AMX, log=_quiet, cache_dir=tmp_path)
    assert not other_host.cached, "another CPU decides anew"


def test_a_passing_mode_must_beat_fp32_by_the_margin() -> None:
    fp32 = _load()
    unreachable = Thresholds(min_speedup=100.0)
    chosen, decision = decide(
        fp32, [make_memfile(fp32).to_packed()], 2, 16, thresholds=unreachable, host=AVX2
    )
    int8 = next(c for c in decision.candidates if c.mode == "int8")
    assert int8.passed, "int8 keeps fp32's answers on the probe"
    assert int8.seconds_per_batch is not None
    assert (decision.chosen, chosen) == ("fp32", fp32), "but is not 100x faster, so fp32 stays"
