"""Evaluate a trained task on a data split with the task's GLUE metric.

What runs a batch is a :data:`Predictor`. A SPARTAN memory is always evaluated through the
production inference path (:func:`memory_predictor`, i.e. :func:`~memories.model.run_batch`, the
same code the service uses), so a dev score measured here is the score users get; the baselines
of :mod:`memories.methods` bring their own predictor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from memories.backbone import Backbone, Encoded
from memories.data import Example, TaskSpec, targets
from memories.metrics import compute_metrics
from memories.model import PackedMemory, run_batch


@dataclass(frozen=True)
class Evaluation:
    """Metrics (``score`` is the ranking one) and the prediction of every example, in order."""

    metrics: dict[str, float]
    predictions: list[float] | list[int]


Predictor = Callable[[Encoded], torch.Tensor]
"""A tokenised batch -> logits [B, num_outputs], without gradients."""


def tokenize_examples(backbone: Backbone, examples: Sequence[Example], max_length: int) -> Encoded:
    """One batch of ``examples`` (all single texts or all pairs), truncated to ``max_length``."""
    pairs = [e.pair or "" for e in examples] if examples[0].pair is not None else None
    return backbone.tokenize([e.text for e in examples], pairs, max_length)


def memory_predictor(backbone: Backbone, memory: PackedMemory) -> Predictor:
    """The service's inference path for one memory."""

    def run(batch: Encoded) -> torch.Tensor:
        rows = batch.input_ids.shape[0]
        return torch.stack(run_batch(backbone, batch, [memory] * rows).logits)  # [B, num_outputs]

    return run


def predict(
    backbone: Backbone,
    predictor: Predictor,
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
        batch = tokenize_examples(backbone, [examples[i] for i in rows], max_length)
        logits_batch = predictor(batch)  # [B, num_outputs]
        for row, logits in zip(rows, logits_batch, strict=True):
            outputs[row] = logits
        if progress is not None:
            progress(len(rows))
    if regression:
        return [float(o[0]) for o in outputs]
    return [int(o.argmax()) for o in outputs]


def evaluate(
    backbone: Backbone,
    predictor: Predictor,
    spec: TaskSpec,
    examples: Sequence[Example],
    max_length: int,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Predict every example and score the predictions against the gold labels."""
    gold = targets(spec, examples, spec.name)
    pred = predict(
        backbone, predictor, spec.task_type == "regression", examples, max_length, batch_size, progress
    )
    return Evaluation(compute_metrics(spec, pred, gold), pred)
