"""Task data sets: JSON Lines files and what each task's labels and metric are.

Every file is UTF-8 JSON Lines, one example per line: ``{"text": ..., "label": ...}`` for single
sentences or ``{"text_a": ..., "text_b": ..., "label": ...}`` for pairs (the layout of
``../shared/data``). Labels are class names, or numbers for a regression task. GLUE tasks and BBC
news have a fixed label order and metric in :data:`KNOWN_TASKS`; any other task gets sorted label
names and accuracy (or Pearson/Spearman for numeric labels).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from memories.errors import DataError

TaskType = Literal["classification", "regression"]

Label = str | float


@dataclass(frozen=True)
class Example:
    """One row: text, optional second text of a pair, label (class name or number)."""

    text: str
    pair: str | None
    label: Label


@dataclass(frozen=True)
class TaskSpec:
    """Task type, label order (index = head output) and the metric that ranks checkpoints."""

    name: str
    task_type: TaskType
    labels: tuple[str, ...]
    score: str  # key of compute_metrics() used to keep the best checkpoint
    positive: str | None = None  # positive class of the F1 score (MRPC, QQP)


_NLI2 = ("entailment", "not_entailment")
KNOWN_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("cola", "classification", ("unacceptable", "acceptable"), "matthews"),
        TaskSpec("sst2", "classification", ("negative", "positive"), "accuracy"),
        TaskSpec("mrpc", "classification", ("not_equivalent", "equivalent"), "f1_acc", "equivalent"),
        TaskSpec("qqp", "classification", ("not_duplicate", "duplicate"), "f1_acc", "duplicate"),
        TaskSpec("stsb", "regression", (), "pearson_spearman"),
        TaskSpec("rte", "classification", _NLI2, "accuracy"),
        TaskSpec("wnli", "classification", _NLI2, "accuracy"),
        TaskSpec("qnli", "classification", _NLI2, "accuracy"),
        TaskSpec("mnli", "classification", ("entailment", "neutral", "contradiction"), "accuracy"),
        TaskSpec(
            "bbc", "classification", ("business", "entertainment", "politics", "sport", "tech"), "accuracy"
        ),
    )
}


def split_path(data: Path, task: str, split: str) -> Path:
    """``<data>/<task>/<split>.jsonl`` (data = root of all tasks) or ``<data>/<split>.jsonl``."""
    for candidate in (data / task / f"{split}.jsonl", data / f"{split}.jsonl"):
        if candidate.is_file():
            return candidate
    raise DataError(f"no {split}.jsonl for task {task!r} under {data} (looked in {data / task} and {data})")


def read_examples(path: Path) -> list[Example]:
    """Parse a JSON Lines file; a bad line raises DataError with its line number."""
    examples = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not JSON ({exc.msg})") from None
            examples.append(_example(row, f"{path}:{number}"))
    if not examples:
        raise DataError(f"{path} holds no examples")
    return examples


def _example(row: object, where: str) -> Example:
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object")
    label = row.get("label")
    if isinstance(label, bool) or not isinstance(label, str | int | float):
        raise DataError(f"{where}: 'label' must be a class name or a number, got {label!r}")
    if "text" in row:
        text, pair = row["text"], None
    elif "text_a" in row and "text_b" in row:
        text, pair = row["text_a"], row["text_b"]
        if not isinstance(pair, str):
            raise DataError(f"{where}: 'text_b' must be a string")
    else:
        raise DataError(f"{where}: a row needs 'text', or 'text_a' and 'text_b'")
    if not isinstance(text, str):
        raise DataError(f"{where}: the text must be a string")
    return Example(text, pair, label if isinstance(label, str) else float(label))


def task_spec(task: str, train: Sequence[Example]) -> TaskSpec:
    """The known spec of a GLUE/BBC task, else one inferred from the training labels."""
    if task in KNOWN_TASKS:
        return KNOWN_TASKS[task]
    if all(isinstance(e.label, float) for e in train):
        return TaskSpec(task, "regression", (), "pearson_spearman")
    if any(isinstance(e.label, float) for e in train):
        raise DataError(f"task {task!r} mixes numeric and class-name labels")
    labels = tuple(sorted({str(e.label) for e in train}))
    if len(labels) < 2:
        raise DataError(f"task {task!r} has a single label {labels}; a classifier needs at least 2")
    return TaskSpec(task, "classification", labels, "accuracy")


def targets(spec: TaskSpec, examples: Sequence[Example], where: str) -> list[float] | list[int]:
    """Numeric targets: label indices for classification, values for regression."""
    if spec.task_type == "regression":
        if not all(isinstance(e.label, float) for e in examples):
            raise DataError(f"{where}: regression task {spec.name!r} needs numeric labels")
        return [float(e.label) for e in examples]
    index = {label: i for i, label in enumerate(spec.labels)}
    out = []
    for e in examples:
        if e.label not in index:
            raise DataError(f"{where}: label {e.label!r} is not one of {list(spec.labels)}")
        out.append(index[str(e.label)])
    return out
