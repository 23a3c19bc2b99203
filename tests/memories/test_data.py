"""Data loading: layouts, label specs and errors that name the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from memories.data import Example, read_examples, split_path, targets, task_spec
from memories.errors import DataError


def test_reads_single_texts_and_pairs(toy_data: Path) -> None:
    single = read_examples(split_path(toy_data, "toy", "train"))
    assert single[0] == Example("a wonderful, warm film", None, "positive")
    pairs = read_examples(split_path(toy_data, "toypair", "train"))
    assert pairs[0].pair == "Someone plays a guitar."
    scores = read_examples(split_path(toy_data / "toyreg", "anything", "dev"))
    assert isinstance(scores[0].label, float)


def test_task_spec_known_and_inferred(toy_data: Path) -> None:
    sst2 = task_spec("sst2", [])
    assert sst2.labels == ("negative", "positive")
    toy = task_spec("toy", read_examples(split_path(toy_data, "toy", "train")))
    assert toy.labels == ("negative", "positive")
    assert toy.task_type == "classification"
    reg = task_spec("toyreg", read_examples(split_path(toy_data, "toyreg", "train")))
    assert reg.task_type == "regression"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok", "label": "a"}\nnot json\n', r"rows.jsonl:2: not JSON"),
        ('{"label": "a"}\n', r"rows.jsonl:1: a row needs 'text'"),
        ('{"text": "ok", "label": null}\n', r"rows.jsonl:1: 'label' must be a class name or a number"),
        ('{"text": 5, "label": "a"}\n', r"rows.jsonl:1: the text must be a string"),
        ("[1, 2]\n", r"rows.jsonl:1: a row must be a JSON object"),
        ("\n", r"holds no examples"),
    ],
)
def test_bad_rows_name_their_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_examples(path)


def test_missing_split_and_unknown_labels(tmp_path: Path, toy_data: Path) -> None:
    with pytest.raises(DataError, match="no dev.jsonl for task 'nope'"):
        split_path(tmp_path, "nope", "dev")
    spec = task_spec("sst2", [])
    with pytest.raises(DataError, match="label 'meh' is not one of"):
        targets(spec, [Example("x", None, "meh")], "here")
    with pytest.raises(DataError, match="single label"):
        task_spec("mine", [Example("x", None, "a")])
