"""Request checks and the per-row prediction the engine thread makes (no HTTP, no torch model)."""

from __future__ import annotations

import math

import pytest
import torch

from memories.backbone import Backbone
from memories.config import SpartanConfig
from memories.memfile import MemoryMetadata
from service.errors import InvalidRequestError, PayloadTooLargeError
from service.predictions import TextInput, check_inputs, predict


def _meta(backbone: Backbone, labels: tuple[str, ...]) -> MemoryMetadata:
    return MemoryMetadata.for_backbone(backbone, SpartanConfig(), labels, backbone.pooling, 64)


@pytest.mark.parametrize(
    ("inputs", "error", "message"),
    [
        ([], InvalidRequestError, "give at least one text"),
        ([TextInput("ok"), TextInput("  ")], InvalidRequestError, r"inputs\[1\]: the text is empty"),
        ([TextInput("x")] * 3, PayloadTooLargeError, "3 texts, the limit is 2"),
        (
            [TextInput("abc", "defghij")],
            PayloadTooLargeError,
            r"inputs\[0\]: 7 characters, the limit is 6",
        ),
    ],
)
def test_check_inputs_refuses_with_what_to_fix(
    inputs: list[TextInput], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        check_inputs(inputs, max_inputs=2, max_chars=6)


def test_each_text_of_a_pair_has_the_whole_character_limit() -> None:
    check_inputs([TextInput("abcdef", "ghijkl")], max_inputs=2, max_chars=6)


def test_classification_scores_are_a_softmax_over_the_labels(roberta_tiny: Backbone) -> None:
    prediction = predict(_meta(roberta_tiny, ("a", "b", "c")), [0.0, 2.0, 1.0], None, "none")
    assert prediction.label == "b"
    assert prediction.scores is not None
    assert math.isclose(sum(prediction.scores.values()), 1.0, abs_tol=1e-5)
    expected = math.exp(2.0) / (1 + math.exp(2.0) + math.exp(1.0))
    assert math.isclose(prediction.scores["b"], expected, abs_tol=1e-6)
    assert prediction.parents is None
    assert prediction.value is None


def test_regression_returns_the_value(roberta_tiny: Backbone) -> None:
    prediction = predict(_meta(roberta_tiny, ()), [3.25], None, "none")
    assert (prediction.value, prediction.label, prediction.scores) == (3.25, None, None)


def test_explain_reduces_routing_per_layer(roberta_tiny: Backbone) -> None:
    routing = torch.zeros(2, 3, 4)  # [L, S, Np]
    routing[0, :, 1] = 1.0
    routing[1, :2, 2] = 1.0
    routing[1, 2, 3] = 1.0
    meta = _meta(roberta_tiny, ("no", "yes"))
    last = predict(meta, [0.0, 1.0], routing, "last_layer").parents
    assert last is not None
    assert [p.layer for p in last] == [1]
    assert last[0].top == [2, 3], "parents by decreasing mean weight, non-zero only"
    assert math.isclose(sum(last[0].weights), 1.0, abs_tol=1e-5)
    every = predict(meta, [0.0, 1.0], routing, "all_layers").parents
    assert every is not None
    assert [p.layer for p in every] == [0, 1]
    assert every[0].top == [1]
    assert predict(meta, [0.0, 1.0], routing, "none").parents is None, "routing without explain is dropped"
