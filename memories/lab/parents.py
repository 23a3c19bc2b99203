"""Which parent each input picks, against its gold label (the paper's Figure 2).

For every example the memory runs on the production path with routing recorded; in the chosen
layer (default: the last) each input is assigned the parent it picks: the parent with the
largest gate at the pooled position for ``cls`` pooling, else the parent picked by most of its
real tokens (their top-1 parent; ties go to the lower index). The result is a parents x labels
count table, how concentrated each parent is (its top label's share) and the labels' purity
over all inputs (the count-weighted mean of that share), beside what a parent that ignores
labels would show (the largest label's share of the data).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from memories.atomic import write_figure
from memories.backbone import Backbone
from memories.config import SpartanConfig
from memories.data import Example
from memories.errors import ConfigError
from memories.evaluate import tokenize_examples
from memories.model import PackedMemory, run_batch


@dataclass(frozen=True)
class ParentLabels:
    layer: int
    labels: tuple[str, ...]
    counts: list[list[int]]  # [parent][label]: inputs of that label picking that parent

    def purity(self) -> list[float | None]:
        """Per parent: the share of its inputs that carry its most common label (None if unused)."""
        return [max(row) / sum(row) if sum(row) else None for row in self.counts]

    def weighted_purity(self) -> float:
        """The share of all inputs whose parent's most common label is their own."""
        total = sum(sum(row) for row in self.counts)
        return sum(max(row) for row in self.counts) / total if total else 0.0

    def chance_purity(self) -> float:
        """What ``weighted_purity`` is when parents ignore labels: the largest label's share."""
        per_label = [sum(row[j] for row in self.counts) for j in range(len(self.labels))]
        return max(per_label) / sum(per_label) if sum(per_label) else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "layer": self.layer,
            "labels": list(self.labels),
            "counts": self.counts,
            "purity": [None if p is None else round(p, 4) for p in self.purity()],
            "weighted_purity": round(self.weighted_purity(), 4),
            "chance_purity": round(self.chance_purity(), 4),
        }


def picked_parent(gates: torch.Tensor, real_tokens: int, pooling: str) -> int:
    """gates [S, Np] of one input in one layer -> the parent that input picks."""
    if pooling == "cls":
        return int(gates[0].argmax())
    top = gates[:real_tokens].argmax(dim=-1)  # [real_tokens]
    return int(torch.bincount(top, minlength=gates.shape[-1]).argmax())


def parent_labels(
    backbone: Backbone,
    memory: PackedMemory,
    labels: Sequence[str],
    examples: Sequence[Example],
    max_length: int,
    layer: int = -1,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> ParentLabels:
    """Count, per parent of ``layer`` (negative: from the end), the gold labels of the inputs picking it."""
    config = memory.config
    if not isinstance(config, SpartanConfig):
        raise ConfigError(f"a {memory.kind} memory has no parents to label")
    num_layers, num_parents = len(memory.layers), config.num_parents
    index = layer % num_layers
    label_index = {name: j for j, name in enumerate(labels)}
    counts = [[0] * len(labels) for _ in range(num_parents)]
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = tokenize_examples(backbone, chunk, max_length)
        out = run_batch(backbone, batch, [memory] * len(chunk), record_routing=True)
        assert out.routing is not None, "routing was asked for"
        for row, example in enumerate(chunk):
            real = int(batch.attention_mask[row].sum())
            gates = out.routing[row]  # [L, S, Np]
            assert gates is not None, "a SPARTAN row has its routing"
            parent = picked_parent(gates[index], real, memory.pooling)
            counts[parent][label_index[str(example.label)]] += 1
        if progress is not None:
            progress(len(chunk))
    return ParentLabels(index, tuple(labels), counts)


def plot_parent_labels(result: ParentLabels, title: str, path: Path) -> None:
    """One bar group per parent: how many inputs of each label pick it (like the paper's Figure 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parents = len(result.counts)
    figure, axes = plt.subplots(1, parents, figsize=(2.6 * parents, 3.4), sharey=True)
    axes_list = list(axes) if parents > 1 else [axes]
    for parent, (axis, row) in enumerate(zip(axes_list, result.counts, strict=True)):
        axis.bar(range(len(result.labels)), row, color=[f"C{j}" for j in range(len(result.labels))])
        axis.set_xticks(range(len(result.labels)), result.labels, rotation=60, ha="right")
        axis.set_title(f"parent {parent + 1} ({sum(row)})")
    axes_list[0].set_ylabel("inputs picking the parent")
    figure.suptitle(title)
    figure.tight_layout()
    write_figure(figure, path, dpi=110)
    plt.close(figure)
