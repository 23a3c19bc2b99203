"""``auto`` precision: the fastest mode that keeps fp32's answers, measured on the host it runs on.

1. **Candidates.** ``int8`` everywhere (fbgemm on x86, qnnpack on ARM); ``bf16`` only where the
   CPU has bf16 units (``avx512_bf16`` or ``amx_bf16``): without them torch emulates bf16, which
   measured 0.12x fp32 on an AVX2-only AMD EPYC, so timing it would only cost start-up time.
2. **Check** against fp32 on a fixed probe: every one of :data:`PROBE_TEXTS` through every probe
   memory (up to :data:`MAX_PROBE_MEMORIES`). Rows fp32 is decided about (top probability at
   least :attr:`Thresholds.decided_confidence`) keep fp32's label in at least
   :attr:`Thresholds.decided_agreement` of them; the probabilities move by at most
   :attr:`Thresholds.mean_prob_diff` on average (per row: the largest change of any label); the
   chosen parents (top-K per token and layer) overlap fp32's by at least
   :attr:`Thresholds.parent_agreement` on average.
3. **Time** fp32 and every passing candidate on a fixed batch (8 rows of 64 tokens by default:
   the serving shape, kept small so that deciding costs seconds, not tens of seconds, on a
   RoBERTa-base), in interleaved rounds; the check above already warmed every mode up. The
   fastest wins (the median per-round time) if it beats fp32 by :attr:`Thresholds.min_speedup`
   (modes within 10% of each other flip with the noise of a shared host, and fp32 is exact);
   fp32 is the fallback when no candidate passes.

Candidates are deep copies of the fp32 backbone (0.25 s for RoBERTa-base, against 2-4 s to load
it again), switched to their mode.

Why these thresholds (measured on MiniLM with the demo memories, docs/performance.md): near-ties
flip under any perturbation (int8 turned "the service was slow but the food was excellent",
fp32 0.61 negative, into positive), so the label check counts decided rows only; int8 with its
first layer in fp32 kept every decided row, moved probabilities by 0.02 on average and chose
94% of fp32's parents, and moves dev accuracy by at most 0.4 points. A mode that changes a
decided answer in more than 1 row of 30, or moves the average answer by more than 0.05, is not
the same model any more.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from memories.atomic import atomic_write
from memories.backbone import Backbone, Encoded
from memories.config import SpartanConfig
from memories.hardware import Cpu, cpu
from memories.model import PackedMemory, TaskMemory, run_batch
from memories.precision import Precision, set_precision

PROBE_TEXTS = (
    "a gorgeous, witty, seductive movie",
    "the plot is a dull mess and the acting is worse",
    "Shares in the carmaker rose after quarterly profits beat forecasts",
    "The striker scored twice as the home side won the cup final",
    "Ministers announced a review of the budget ahead of the election",
    "The new phone ships with a faster chip and a larger battery",
    "The film's soundtrack topped the charts for a third week",
    "I would not recommend this restaurant to anyone",
    "an unexpectedly moving story about two old friends",
    "The central bank held interest rates steady on Thursday",
    "The software update fixes a security flaw in the browser",
    "Critics praised the actress for her role in the stage play",
    "the service was slow but the food was excellent",
    "Parliament voted to delay the new law until next spring",
    "The team's coach resigned after a run of heavy defeats",
    "a tedious two hours that feels like four",
)


MAX_PROBE_MEMORIES = 4
PROBE_TOKENS = 32  # the probe texts are short; a byte-level tokenizer would pad them to 64


@dataclass(frozen=True)
class Thresholds:
    """How close to fp32 a candidate must stay on the probe to be chosen."""

    decided_confidence: float = 0.75
    decided_agreement: float = 0.97
    mean_prob_diff: float = 0.05
    parent_agreement: float = 0.90
    min_speedup: float = 1.10  # a mode must beat fp32 by this much to replace it (no flip for noise)


@dataclass(frozen=True)
class Candidate:
    """One mode on the probe: its check against fp32 and its speed (None: not timed)."""

    mode: Precision
    passed: bool
    reason: str  # why it was skipped or failed, or "ok"
    decided_agreement: float | None = None
    mean_prob_diff: float | None = None
    parent_agreement: float | None = None
    seconds_per_batch: float | None = None
    speedup: float | None = None  # fp32 seconds / this mode's seconds


@dataclass(frozen=True)
class Decision:
    """What ``auto`` chose on this host, and everything it measured to choose it."""

    chosen: Precision
    cpu: str
    cpu_flags: list[str]
    torch_capability: str
    probe_shape: tuple[int, int]  # (batch, tokens) of the timing batch
    candidates: list[Candidate] = field(default_factory=list)
    seconds: float = 0.0  # what deciding cost
    cached: bool = False  # reused from an earlier start on this host (seconds: applying it)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def random_probe_memory(backbone: Backbone, seed: int = 0) -> PackedMemory:
    """A seeded untrained memory, the probe when no real memory is at hand (routing is then
    checked on random keys, and labels only where its head happens to be decided)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        task = TaskMemory(backbone.hidden_size, backbone.num_layers, 2, SpartanConfig())
    finally:
        torch.random.set_rng_state(generator_state)
    return task.pack(backbone.pooling)


def _timing_batch(backbone: Backbone, batch_size: int, seq_length: int) -> Encoded:
    """A fixed batch of the serving shape: ``batch_size`` rows of ``seq_length`` real tokens."""
    generator = torch.Generator().manual_seed(0)
    low = 1000 if backbone.tokenizer.vocab_size > 2000 else 5
    ids = torch.randint(low, backbone.tokenizer.vocab_size, (batch_size, seq_length), generator=generator)
    types = torch.zeros_like(ids) if backbone.model_type == "bert" else None
    return Encoded(ids, torch.ones_like(ids), types)


def _check(
    reference: Backbone,
    candidate: Backbone,
    probe: Encoded,
    memories: Sequence[PackedMemory],
    thresholds: Thresholds,
) -> tuple[bool, str, float, float, float]:
    """(passed, reason, decided-label agreement, mean probability change, parent agreement)."""
    want = run_batch(reference, probe, memories, record_routing=True)
    got = run_batch(candidate, probe, memories, record_routing=True)
    assert want.routing is not None, "routing was asked for"
    assert got.routing is not None, "routing was asked for"
    p_want = [logits.float().softmax(-1) for logits in want.logits]
    p_got = [logits.float().softmax(-1) for logits in got.logits]
    decided = [(a, b) for a, b in zip(p_want, p_got, strict=True) if a.max() >= thresholds.decided_confidence]
    # No decided row (e.g. an untrained probe memory): the label check has nothing to hold.
    agree = sum(int(a.argmax() == b.argmax()) for a, b in decided) / len(decided) if decided else 1.0
    diff = statistics.fmean(float((a - b).abs().max()) for a, b in zip(p_want, p_got, strict=True))
    overlaps = []
    for row, (gate_want, gate_got) in enumerate(zip(want.routing, got.routing, strict=True)):
        if gate_want is None or gate_got is None:  # a LoRA-XS row: no parents to agree on
            continue
        real = probe.attention_mask[row].bool()  # [S]
        chosen_want, chosen_got = gate_want[:, real] > 0, gate_got[:, real] > 0  # [L, S_real, Np]
        both = (chosen_want & chosen_got).sum(-1).float()  # [L, S_real]
        overlaps.append(both / chosen_want.sum(-1).clamp(min=1))
    parents = float(torch.cat([o.flatten() for o in overlaps]).mean()) if overlaps else 1.0
    failed = []
    if agree < thresholds.decided_agreement:
        failed.append(f"decided-label agreement {agree:.3f} < {thresholds.decided_agreement}")
    if diff > thresholds.mean_prob_diff:
        failed.append(f"mean probability change {diff:.3f} > {thresholds.mean_prob_diff}")
    if parents < thresholds.parent_agreement:
        failed.append(f"parent agreement {parents:.3f} < {thresholds.parent_agreement}")
    return not failed, "; ".join(failed) or "ok", agree, diff, parents


def _time(
    backbones: dict[Precision, Backbone], batch: Encoded, memory: PackedMemory, rounds: int
) -> dict[Precision, float]:
    """Median seconds per batch of each backbone, rounds interleaved (each already warmed up)."""
    memories = [memory] * batch.input_ids.shape[0]
    seconds: dict[Precision, list[float]] = {mode: [] for mode in backbones}
    for _ in range(rounds):
        for mode, backbone in backbones.items():
            started = time.perf_counter()
            run_batch(backbone, batch, memories)
            seconds[mode].append(time.perf_counter() - started)
    return {mode: statistics.median(values) for mode, values in seconds.items()}


def _cache_file(cache_dir: Path, fp32: Backbone, host: Cpu, key: dict[str, object]) -> Path:
    """One decision per backbone and host: the file name hashes everything the decision depends on."""
    facts = {"fingerprint": fp32.fingerprint, "cpu": asdict(host), "torch": torch.__version__, **key}
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir / "precision" / f"{fp32.name.replace('/', '_')[-40:]}-{digest}.json"


def _cached(path: Path) -> Decision | None:
    try:
        raw = json.loads(path.read_text())
        candidates = [Candidate(**c) for c in raw.pop("candidates")]
        return Decision(**{**raw, "probe_shape": tuple(raw["probe_shape"]), "candidates": candidates})
    except (OSError, ValueError, TypeError, KeyError):
        return None


def decide(
    fp32: Backbone,
    memories: Sequence[PackedMemory],
    batch_size: int = 8,
    seq_length: int = 64,
    rounds: int = 2,
    thresholds: Thresholds | None = None,
    candidates: Sequence[Precision] = ("bf16", "int8"),
    host: Cpu | None = None,
    log: Callable[[str], None] = print,
    cache_dir: Path | None = None,
) -> tuple[Backbone, Decision]:
    """Choose the precision for ``fp32``'s backbone here; returns the backbone in that mode.

    ``memories`` are the probe memories (at least one, fp32-packed). The fp32 backbone itself is
    returned when fp32 wins; else a copy in the chosen mode (the fp32 one is then dropped). With
    ``cache_dir``, a decision made before for this backbone on this CPU (same flags, torch,
    thresholds, candidates and probe shape) is reused and only its mode is applied.
    """
    assert fp32.precision == "fp32", "auto starts from the fp32 backbone"
    assert memories, "the probe needs at least one memory"
    started = time.perf_counter()
    thresholds = thresholds or Thresholds()
    host = host or cpu()
    key: dict[str, object] = {
        "thresholds": asdict(thresholds),
        "candidates": list(candidates),
        "shape": [batch_size, seq_length],
    }
    path = _cache_file(cache_dir, fp32, host, key) if cache_dir is not None else None
    known = _cached(path) if path is not None else None
    if known is not None:
        chosen = fp32 if known.chosen == "fp32" else set_precision(copy.deepcopy(fp32), known.chosen)
        log(f"precision auto: {known.chosen}, as measured before on this host ({path})")
        return chosen, replace(known, cached=True, seconds=round(time.perf_counter() - started, 2))
    shape = (batch_size, seq_length)
    kept, decision = _measure(fp32, memories, shape, rounds, thresholds, candidates, host, log)
    decision = replace(decision, seconds=round(time.perf_counter() - started, 2))
    if path is not None:
        atomic_write(path, json.dumps(decision.to_json(), indent=2).encode())
    return kept, decision


def _measure(
    fp32: Backbone,
    memories: Sequence[PackedMemory],
    shape: tuple[int, int],
    rounds: int,
    thresholds: Thresholds,
    candidates: Sequence[Precision],
    host: Cpu,
    log: Callable[[str], None],
) -> tuple[Backbone, Decision]:
    """Check every candidate against fp32, time the passing ones, keep the fastest."""
    batch_size, seq_length = shape
    probing = list(memories[:MAX_PROBE_MEMORIES])
    probe = fp32.tokenize(list(PROBE_TEXTS) * len(probing), max_length=min(seq_length, PROBE_TOKENS))
    rows = [memory for memory in probing for _ in PROBE_TEXTS]
    results: dict[Precision, Candidate] = {}
    passing: dict[Precision, Backbone] = {"fp32": fp32}
    with torch.inference_mode():
        for mode in candidates:
            if mode == "bf16" and not host.has_bf16_units:
                reason = (
                    "skipped: no bf16 units (avx512_bf16/amx_bf16); emulated bf16 is far slower than fp32"
                )
                results[mode] = Candidate(mode, False, reason)
                continue
            backbone = set_precision(copy.deepcopy(fp32), mode)
            ok, reason, agree, diff, parents = _check(fp32, backbone, probe, rows, thresholds)
            results[mode] = Candidate(mode, ok, reason, agree, diff, parents)
            measured = f"decided labels {agree:.3f}, probabilities {diff:.4f}, parents {parents:.3f}"
            log(f"precision auto: {mode}: {reason} ({measured})")
            if ok:
                passing[mode] = backbone
        timed = _time(passing, _timing_batch(fp32, batch_size, seq_length), memories[0], rounds)
    fp32_seconds = timed["fp32"]
    results["fp32"] = Candidate("fp32", True, "reference", 1.0, 0.0, 1.0, fp32_seconds, 1.0)
    for mode, seconds in timed.items():
        if mode != "fp32":
            results[mode] = replace(results[mode], seconds_per_batch=seconds, speedup=fp32_seconds / seconds)
    faster = {m: t for m, t in timed.items() if m == "fp32" or fp32_seconds / t >= thresholds.min_speedup}
    chosen: Precision = min(faster, key=lambda mode: faster[mode])
    decision = Decision(
        chosen,
        host.model,
        list(host.flags),
        host.torch_capability,
        (batch_size, seq_length),
        [results[mode] for mode in ("fp32", *candidates) if mode in results],
    )
    speeds = ", ".join(f"{m} {1 / s:.2f} batch/s" for m, s in timed.items())
    log(f"precision auto: chose {chosen} on {host.model} ({host.torch_capability}): {speeds}")
    kept = passing[chosen]
    passing.clear()
    gc.collect()
    return kept, decision
