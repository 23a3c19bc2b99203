"""Evaluate a memory on a data split with the task's GLUE metric.

Evaluation always runs the production inference path (:func:`~memories.model.run_batch`), the
same code the service uses, so a dev score measured here is the score users get.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from memories.backbone import Backbone
from memories.data import Example, TaskSpec, targets
from memories.metrics import compute_metrics
from memories.model import PackedMemory, run_batch


@dataclass(frozen=True)
class Evaluation:
    """Metrics (``score`` is the ranking one) and the prediction of every example, in order."""

    metrics: dict[str, float]
    predictions: list[float] | list[int]


def predict(
    backbone: Backbone,
    memory: PackedMemory,
    regression: bool,
    examples: Sequence[Example],
    max_length: int,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> list[float] | list[int]:
    """Class indices (or values for regression) for every example, in input order.

    Examples are run longest first in batches of similar length to limit padding.
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].text) - len(examples[i].pair or ""))
    outputs: list[torch.Tensor] = [torch.empty(0)] * len(examples)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        chunk = [examples[i] for i in rows]
        pairs = [e.pair or "" for e in chunk] if chunk[0].pair is not None else None
        batch = backbone.tokenize([e.text for e in chunk], pairs, max_length)
        result = run_batch(backbone, batch, [memory] * len(rows))
        for row, logits in zip(rows, result.logits, strict=True):
            outputs[row] = logits
        if progress is not None:
            progress(len(rows))
    if regression:
        return [float(o[0]) for o in outputs]
    return [int(o.argmax()) for o in outputs]


def evaluate(
    backbone: Backbone,
    memory: PackedMemory,
    spec: TaskSpec,
    examples: Sequence[Example],
    max_length: int,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Predict every example and score the predictions against the gold labels."""
    gold = targets(spec, examples, spec.name)
    pred = predict(
        backbone, memory, spec.task_type == "regression", examples, max_length, batch_size, progress
    )
    return Evaluation(compute_metrics(spec, pred, gold), pred)
