"""GLUE metrics, written out with NumPy (accuracy, F1, Matthews, Pearson, Spearman)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from memories.data import TaskSpec


def accuracy(pred: Sequence[int], gold: Sequence[int]) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(gold)))


def f1_binary(pred: Sequence[int], gold: Sequence[int], positive: int) -> float:
    p, g = np.asarray(pred) == positive, np.asarray(gold) == positive
    tp = float(np.sum(p & g))
    denominator = float(np.sum(p) + np.sum(g))
    return 2 * tp / denominator if denominator else 0.0


def macro_f1(pred: Sequence[int], gold: Sequence[int], num_classes: int) -> float:
    return float(np.mean([f1_binary(pred, gold, c) for c in range(num_classes)]))


def matthews(pred: Sequence[int], gold: Sequence[int], num_classes: int) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K); the binary MCC for two classes."""
    confusion = np.zeros((num_classes, num_classes))
    np.add.at(confusion, (np.asarray(gold), np.asarray(pred)), 1)
    t, p = confusion.sum(axis=1), confusion.sum(axis=0)
    n, correct = confusion.sum(), np.trace(confusion)
    numerator = correct * n - t @ p
    denominator = np.sqrt((n**2 - p @ p) * (n**2 - t @ t))
    return float(numerator / denominator) if denominator else 0.0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denominator) if denominator else 0.0


def _ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n with ties sharing their average rank."""
    array = np.asarray(values, dtype=np.float64)
    order = np.argsort(array, kind="stable")
    ranks = np.empty(len(array))
    ranks[order] = np.arange(1, len(array) + 1)
    _, inverse, counts = np.unique(array, return_inverse=True, return_counts=True)
    sums = np.zeros(len(counts))
    np.add.at(sums, inverse, ranks)
    return np.asarray(sums[inverse] / counts[inverse])


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return pearson(_ranks(x).tolist(), _ranks(y).tolist())


def compute_metrics(
    spec: TaskSpec, pred: Sequence[float] | Sequence[int], gold: Sequence[float] | Sequence[int]
) -> dict[str, float]:
    """Every metric of the task plus ``score``: the one number that ranks checkpoints (GLUE's)."""
    if spec.task_type == "regression":
        metrics = {"pearson": pearson(pred, gold), "spearman": spearman(pred, gold)}
        metrics["pearson_spearman"] = (metrics["pearson"] + metrics["spearman"]) / 2
    else:
        p, g = [int(v) for v in pred], [int(v) for v in gold]
        classes = len(spec.labels)
        metrics = {"accuracy": accuracy(p, g), "macro_f1": macro_f1(p, g, classes)}
        if spec.name == "cola":
            metrics["matthews"] = matthews(p, g, classes)
        if spec.positive is not None:
            metrics["f1"] = f1_binary(p, g, spec.labels.index(spec.positive))
            metrics["f1_acc"] = (metrics["f1"] + metrics["accuracy"]) / 2
    metrics["score"] = metrics[spec.score]
    return metrics
