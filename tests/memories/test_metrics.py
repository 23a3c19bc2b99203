"""GLUE metrics against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from memories.data import KNOWN_TASKS, TaskSpec
from memories.metrics import accuracy, compute_metrics, f1_binary, macro_f1, matthews, pearson, spearman


def test_accuracy_and_f1() -> None:
    pred, gold = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    assert accuracy(pred, gold) == pytest.approx(3 / 5)
    # positive 1: tp 2, predicted 3, actual 3 -> 2*2/6
    assert f1_binary(pred, gold, 1) == pytest.approx(4 / 6)
    # class 0: tp 1, predicted 2, actual 2 -> 0.5; macro = (0.5 + 2/3) / 2
    assert macro_f1(pred, gold, 2) == pytest.approx((0.5 + 4 / 6) / 2)


def test_matthews_binary_matches_the_textbook_formula() -> None:
    pred, gold = [1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0]
    tp, tn, fp, fn = 2, 2, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert matthews(pred, gold, 2) == pytest.approx(expected)
    assert matthews([0, 0, 0], [0, 1, 0], 2) == 0.0, "a constant prediction scores 0"


def test_pearson_and_spearman() -> None:
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)
    # ties share the average rank: x ranks [1.5, 1.5, 3], y ranks [1, 2, 3]
    assert spearman([5, 5, 7], [1, 2, 3]) == pytest.approx(pearson([1.5, 1.5, 3], [1, 2, 3]))


def test_compute_metrics_scores_each_task_the_glue_way() -> None:
    mrpc = compute_metrics(KNOWN_TASKS["mrpc"], [1, 1, 0, 0], [1, 0, 0, 1])
    assert mrpc["score"] == pytest.approx((mrpc["f1"] + mrpc["accuracy"]) / 2)
    cola = compute_metrics(KNOWN_TASKS["cola"], [1, 0, 1, 0], [1, 0, 0, 0])
    assert cola["score"] == cola["matthews"]
    stsb = compute_metrics(KNOWN_TASKS["stsb"], [0.5, 2.0, 4.0], [1.0, 2.5, 4.5])
    assert stsb["score"] == pytest.approx(1.0)
    custom = compute_metrics(
        TaskSpec("x", "classification", ("a", "b", "c"), "accuracy"), [0, 1, 2], [0, 1, 1]
    )
    assert custom["score"] == pytest.approx(2 / 3)
