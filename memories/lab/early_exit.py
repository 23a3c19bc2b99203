"""Early exit's trade: dev score against throughput as the exit threshold is swept.

For one memory with exits (memories.exits), every threshold is scored on the whole split (the
exits decide per row, so the batch size does not change a score) and timed at each batch size
against the same memory with its exits switched off, in one run, variants interleaved
(memories.lab.timing): the speed-ups are ratios measured side by side, never absolute times
compared across runs. A threshold of 1.0 never leaves early, so its score is the memory's own.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from memories.backbone import Backbone, Encoded
from memories.data import Example, TaskSpec, targets
from memories.errors import ConfigError
from memories.evaluate import tokenize_examples
from memories.lab.timing import interleaved, median_ratio
from memories.metrics import compute_metrics
from memories.model import PackedMemory, run_batch

NO_EXITS = "no-exits"


@dataclass(frozen=True)
class SweepOptions:
    """What a sweep measures: thresholds, batch sizes, and how much is timed."""

    thresholds: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
    batch_sizes: tuple[int, ...] = (1, 32)
    timed_examples: int = 256  # the first n examples of the split, in its order, for the timings
    rounds: int = 3
    max_seq_length: int = 128
    score_batch_size: int = 64

    def __post_init__(self) -> None:
        if not self.thresholds or not all(0.0 < t <= 1.0 for t in self.thresholds):
            raise ConfigError(f"thresholds must be in (0, 1], got {list(self.thresholds)}")
        if not self.batch_sizes or min(self.batch_sizes) < 1 or self.timed_examples < 1 or self.rounds < 1:
            raise ConfigError("batch sizes, timed examples and rounds must be at least 1")


def _batches(backbone: Backbone, examples: Sequence[Example], size: int, max_length: int) -> list[Encoded]:
    batches = []
    for start in range(0, len(examples), size):
        batches.append(tokenize_examples(backbone, examples[start : start + size], max_length))
    return batches


def _score(
    backbone: Backbone,
    memory: PackedMemory,
    spec: TaskSpec,
    examples: Sequence[Example],
    threshold: float,
    options: SweepOptions,
) -> dict[str, Any]:
    """The split's metrics at one threshold, and where its rows left the backbone."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].text) - len(examples[i].pair or ""))
    ordered = [examples[i] for i in order]
    predicted: list[int] = [0] * len(examples)
    left: list[int] = [0] * len(examples)
    position = 0
    for batch in _batches(backbone, ordered, options.score_batch_size, options.max_seq_length):
        rows = batch.input_ids.shape[0]
        out = run_batch(backbone, batch, [memory] * rows, exit_thresholds=[threshold] * rows)
        for logits, layer in zip(out.logits, out.exit_layers, strict=True):
            predicted[order[position]], left[order[position]] = int(logits.argmax()), layer
            position += 1
    metrics = compute_metrics(spec, predicted, targets(spec, examples, spec.name))
    last = backbone.num_layers - 1
    return {
        "metrics": metrics,
        "exited_fraction": round(sum(layer < last for layer in left) / len(left), 4),
        "mean_layers_run": round(statistics.fmean(layer + 1 for layer in left), 3),
        "exit_layers": {str(layer): count for layer, count in sorted(Counter(left).items())},
    }


def sweep(
    backbone: Backbone,
    memory: PackedMemory,
    spec: TaskSpec,
    examples: Sequence[Example],
    options: SweepOptions,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score and time every threshold; returns the report (see the module docstring)."""
    if memory.exits is None:
        raise ConfigError("the memory has no exits: train them with spartan train --exits (or --exits-on)")
    if spec.task_type != "classification":
        raise ConfigError("early exits are for classification tasks")
    plain = dataclasses.replace(memory, exits=None)
    report: dict[str, Any] = {
        "exits": dataclasses.asdict(memory.exits.config),
        "options": dataclasses.asdict(options),
        "examples": len(examples),
        "scores": {},
        "speed": {},
    }
    with torch.no_grad():
        for threshold in options.thresholds:
            scored = _score(backbone, memory, spec, examples, threshold, options)
            report["scores"][str(threshold)] = scored
            log(
                f"threshold {threshold}: score {scored['metrics']['score']:.4f}, "
                f"{scored['exited_fraction']:.0%} left early, {scored['mean_layers_run']} layers on average"
            )
    timed = list(examples[: options.timed_examples])
    for size in options.batch_sizes:
        batches = _batches(backbone, timed, size, options.max_seq_length)

        def run(target: PackedMemory, threshold: float, batches: list[Encoded] = batches) -> None:
            for batch in batches:
                rows = batch.input_ids.shape[0]
                run_batch(backbone, batch, [target] * rows, exit_thresholds=[threshold] * rows)

        variants: dict[str, Callable[[], object]] = {NO_EXITS: lambda: run(plain, 1.0)}
        for threshold in options.thresholds:
            variants[str(threshold)] = lambda t=threshold: run(memory, t)  # type: ignore[misc]
        times = interleaved(variants, options.rounds)
        speed: dict[str, Any] = {}
        for name, seconds in times.items():
            speed[name] = {
                "inst_per_min": round(60.0 * len(timed) / min(seconds), 1),
                "x_no_exits": median_ratio(times[NO_EXITS], seconds),
            }
        report["speed"][str(size)] = speed
        log(f"batch {size}: " + ", ".join(f"{n} {v['x_no_exits']}x" for n, v in speed.items()))
    return report


def plot_sweep(report: dict[str, Any], path: Path, title: str) -> None:
    """Dev score against speed-up over no exits, one line per batch size, thresholds labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    thresholds = list(report["scores"])
    scores = [100 * report["scores"][t]["metrics"]["score"] for t in thresholds]
    for size, speed in report["speed"].items():
        xs = [speed[t]["x_no_exits"] for t in thresholds]
        ax.plot(xs, scores, marker="o", label=f"batch {size}")
        for x, y, t in zip(xs, scores, thresholds, strict=True):
            ax.annotate(t, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    full = 100 * report["scores"][thresholds[-1]]["metrics"]["score"] if "1.0" in thresholds else None
    if full is not None:
        ax.axhline(full - 0.5, color="grey", linestyle=":", label="0.5 points below no early exit")
    ax.set_xlabel("throughput / the same memory without exits")
    ax.set_ylabel("dev score (x100)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
