"""Parent-by-label counts (the paper's Figure 2) on a tiny backbone and the toy data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from memories.backbone import Backbone
from memories.config import SpartanConfig
from memories.data import Example
from memories.lab.parents import ParentLabels, parent_labels, picked_parent
from memories.model import TaskMemory
from spartan_cli.main import main


def test_picked_parent_uses_the_pooled_token_or_the_majority_of_real_tokens() -> None:
    gates = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # [S, Np]
    assert picked_parent(gates, real_tokens=4, pooling="cls") == 1
    assert picked_parent(gates, real_tokens=3, pooling="mean") == 0
    assert picked_parent(gates[[3, 3, 0]], real_tokens=2, pooling="mean") == 2, "padding is ignored"


def test_purities() -> None:
    result = ParentLabels(0, ("a", "b"), [[8, 2], [0, 0], [1, 9]])
    assert result.purity() == [0.8, None, 0.9]
    assert result.weighted_purity() == pytest.approx(17 / 20)
    assert result.chance_purity() == pytest.approx(11 / 20)


def test_every_input_is_counted_once_in_the_layer_asked(roberta_tiny: Backbone) -> None:
    torch.manual_seed(0)
    config = SpartanConfig(num_parents=3, num_children=1, top_k=1)
    memory = TaskMemory(roberta_tiny.hidden_size, roberta_tiny.num_layers, 2, config).pack("cls")
    examples = [Example(f"text number {i}", None, "ab"[i % 2]) for i in range(7)]
    result = parent_labels(roberta_tiny, memory, ["a", "b"], examples, 32, layer=-1, batch_size=3)
    assert result.layer == roberta_tiny.num_layers - 1
    assert len(result.counts) == 3
    assert [sum(row[j] for row in result.counts) for j in range(2)] == [4, 3]


def test_parents_command_writes_json_and_plot(
    toy_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    memory = tmp_path / "toy.safetensors"
    argv = ["train", "--task", "toy", "--data", str(toy_data), "--backbone", "roberta-tiny-random"]
    argv += ["--out", str(memory), "--steps", "2", "--parents", "3", "--children", "1", "--top-k", "1"]
    assert main(argv) == 0
    out = tmp_path / "parents.json"
    assert main(["parents", "--memory", str(memory), "--data", str(toy_data), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert sum(map(sum, report["counts"])) == report["examples"] == 8
    assert report["spartan"] == {"num_parents": 3, "num_children": 1, "top_k": 1}
    assert out.with_suffix(".png").stat().st_size > 10_000
    capsys.readouterr()
