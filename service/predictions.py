"""What a classify request asks and what it gets back, without HTTP: inputs, checks, predictions.

:func:`check_inputs` enforces the per-request limits; :func:`predict` turns one row's head output
(and, when asked, its routing) into a :class:`Prediction`. The engine thread calls
:func:`predict` right after the batch ran, so no model maths or tensor reduction ever runs on
the event loop; the softmax over a task's few labels is plain Python (one ``tolist`` per batch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from memories.memfile import MemoryMetadata
from service.errors import InvalidRequestError, PayloadTooLargeError

Explain = Literal["none", "last_layer", "all_layers"]


@dataclass(frozen=True)
class TextInput:
    """One text, or a sentence pair (paraphrase, entailment tasks)."""

    text: str
    pair: str | None = None


@dataclass(frozen=True)
class ParentUse:
    """How one layer's memory routed an input: mean parent weight over its tokens (sums to 1)."""

    layer: int
    weights: list[float]
    top: list[int]  # parents by decreasing weight, non-zero only


@dataclass(frozen=True)
class Prediction:
    """Classification: ``label`` and ``scores`` (every label's probability). Regression: ``value``."""

    label: str | None = None
    scores: dict[str, float] | None = None
    value: float | None = None
    parents: list[ParentUse] | None = None
    exit_layer: int | None = None  # with explain: the layer the input left the backbone after


@dataclass(frozen=True)
class Classification:
    """A request's answer: every input was served by the same memory ``version``."""

    task: str
    version: int
    predictions: list[Prediction]


def check_inputs(inputs: Sequence[TextInput], max_inputs: int, max_chars: int) -> None:
    """Refuse a request with no text, an empty text, or over the limits: ``max_inputs`` texts (or
    pairs) per request, ``max_chars`` characters per text (each text of a pair on its own)."""
    if not inputs:
        raise InvalidRequestError("inputs: give at least one text")
    if len(inputs) > max_inputs:
        raise PayloadTooLargeError(f"inputs: {len(inputs)} texts, the limit is {max_inputs} per request")
    for n, item in enumerate(inputs):
        if not item.text.strip():
            raise InvalidRequestError(f"inputs[{n}]: the text is empty")
        chars = max(len(item.text), len(item.pair or ""))
        if chars > max_chars:
            raise PayloadTooLargeError(f"inputs[{n}]: {chars} characters, the limit is {max_chars} per text")


def softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def _parents(routing: torch.Tensor, explain: Explain) -> list[ParentUse]:
    """routing [L, S, Np] -> per layer the mean parent weight over the input's tokens."""
    layers = range(routing.shape[0]) if explain == "all_layers" else [routing.shape[0] - 1]
    uses = []
    for layer in layers:
        weights = routing[layer].mean(dim=0)  # [Np]
        order = [int(p) for p in torch.argsort(weights, descending=True) if weights[p] > 0]
        uses.append(ParentUse(layer=layer, weights=[round(float(w), 6) for w in weights], top=order))
    return uses


def predict(
    meta: MemoryMetadata,
    logits: list[float],
    routing: torch.Tensor | None,
    explain: Explain,
    exit_layer: int | None = None,
) -> Prediction:
    """One row's prediction from its head output (or its exit's log-probabilities, the same
    softmax); ``routing`` [L, S, Np] of the layers it ran and the layer it left after are given
    when explained."""
    explained = explain != "none"
    parents = _parents(routing, explain) if routing is not None and explained else None
    left = exit_layer if explained else None
    if meta.task_type == "regression":
        return Prediction(value=logits[0], parents=parents, exit_layer=left)
    probs = softmax(logits)
    scores = {label: round(p, 6) for label, p in zip(meta.labels, probs, strict=True)}
    return Prediction(
        label=meta.labels[probs.index(max(probs))], scores=scores, parents=parents, exit_layer=left
    )


AnswerFormat = Literal["spartan", "pipeline"]

REGRESSION_LABEL = "LABEL_0"
"""The label a transformers pipeline gives a one-output regression model's value."""


@dataclass(frozen=True)
class LabelScore:
    """One label and its probability, as a transformers text-classification pipeline gives it."""

    label: str
    score: float


def ranked(prediction: Prediction, top_k: int | None) -> list[LabelScore]:
    """The ``top_k`` labels by decreasing probability (None: every label). A regression's value
    is one ``LABEL_0`` score, like a pipeline's with ``function_to_apply="none"``."""
    if prediction.scores is None:
        assert prediction.value is not None, "a prediction has scores or a value"
        return [LabelScore(REGRESSION_LABEL, prediction.value)]
    order = sorted(prediction.scores.items(), key=lambda item: item[1], reverse=True)
    return [LabelScore(label, score) for label, score in order[:top_k]]


def top_scores(prediction: Prediction, top_k: int | None) -> Prediction:
    """The prediction with only its ``top_k`` most probable labels' scores (None: all)."""
    if top_k is None or prediction.scores is None:
        return prediction
    kept = {item.label: item.score for item in ranked(prediction, top_k)}
    return Prediction(prediction.label, kept, prediction.value, prediction.parents, prediction.exit_layer)


def as_pipeline(
    answer: Classification, top_k: int | None, single_text: bool
) -> list[LabelScore] | list[list[LabelScore]]:
    """What ``transformers.pipeline("text-classification")`` returns for the same inputs.

    Without ``top_k``: the best label of each input, one entry per input. With ``top_k``: each
    input's ``top_k`` best labels, a list per input, or one flat list for a single text.
    """
    if top_k is None:
        return [ranked(p, 1)[0] for p in answer.predictions]
    per_input = [ranked(p, top_k) for p in answer.predictions]
    return per_input[0] if single_text else per_input


def render(
    answer: Classification, answer_format: AnswerFormat, top_k: int | None, single_text: bool
) -> Classification | list[LabelScore] | list[list[LabelScore]]:
    """The answer in the asked format: the service's own (scores cut to the ``top_k`` best
    labels when given) or a transformers pipeline's (:func:`as_pipeline`)."""
    if answer_format == "pipeline":
        return as_pipeline(answer, top_k, single_text)
    if top_k is None:
        return answer
    return Classification(answer.task, answer.version, [top_scores(p, top_k) for p in answer.predictions])
