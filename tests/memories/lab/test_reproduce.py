"""The reproduction grid: one JSON per cell, resumable, and a table that averages honestly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from memories.backbone import Backbone
from memories.config import RoutedFFNConfig
from memories.errors import ConfigError
from memories.lab.reproduce import (
    PAPER_TASKS,
    GridOptions,
    cell_path,
    format_markdown,
    paper_columns,
    run_grid,
    storage_table,
    summarise,
    train_speed,
    write_table,
)


def test_grid_writes_every_cell_then_resumes_without_retraining(
    roberta_tiny: Backbone, toy_data: Path, tmp_path: Path
) -> None:
    options = GridOptions(
        data=toy_data,
        out=tmp_path / "grid",
        checkpoints=tmp_path / "runs",
        tasks=("toy", "toyreg"),
        methods=("spartan", "probe"),
        steps=4,
        batch_size=4,
        max_seq_length=32,
        eval_every=2,
    )
    lines: list[str] = []
    paths = run_grid(options, roberta_tiny, "spartan reproduce grid ...", lines.append)
    assert [p.name for p in paths] == [
        "toy-spartan-s1.json",
        "toy-probe-s1.json",
        "toyreg-spartan-s1.json",
        "toyreg-probe-s1.json",
    ]
    cell = json.loads(paths[0].read_text())
    assert (cell["task"], cell["method"], cell["steps"], cell["lr"]) == ("toy", "spartan", 4, 1e-3)
    assert cell["file_bytes"] == (tmp_path / "runs" / "toy-spartan-s1.safetensors").stat().st_size
    stamps = [p.stat().st_mtime_ns for p in paths]
    lines.clear()
    run_grid(options, roberta_tiny, "again", lines.append)
    assert [p.stat().st_mtime_ns for p in paths] == stamps, "done cells must not be retrained"
    assert all("skipped" in line for line in lines)
    table = write_table(options.out, "toy grid")
    assert table["tasks"] == ["toy", "toyreg"]
    assert table["methods"] == ["spartan", "probe"]
    assert (options.out / "table.png").stat().st_size > 0
    assert "| toy |" in (options.out / "table.md").read_text()


def _cell(out: Path, task: str, method: str, seed: int, score: float, few_shot: bool = False) -> None:
    path = cell_path(out, task, method, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    budget = {"backbone": "b", "few_shot": few_shot, "steps": 10, "batch_size": 16, "max_seq_length": 64}
    cell = {"task": task, "method": method, "seed": seed, "dev": {"score": score}, **budget}
    path.write_text(json.dumps({**cell, "train_examples_per_minute": 100.0 * seed}))


def test_table_means_over_seeds_and_averages_only_complete_tasks(tmp_path: Path) -> None:
    _cell(tmp_path, "a", "spartan", 1, 0.8)
    _cell(tmp_path, "a", "spartan", 2, 0.6)
    _cell(tmp_path, "a", "probe", 1, 0.5)
    _cell(tmp_path, "b", "spartan", 1, 0.9)
    _cell(tmp_path, "b", "probe", 1, 0.3)
    _cell(tmp_path, "c", "spartan", 1, 0.1)  # no probe cell: left out of the average
    table = summarise(tmp_path)
    assert table["score"]["a"]["spartan"] == pytest.approx(0.7)
    assert table["seeds"]["a"] == {"spartan": 2, "probe": 1}
    assert table["average_over"] == ["a", "b"]
    assert table["average"] == pytest.approx({"spartan": 0.8, "probe": 0.4})
    markdown = format_markdown(table)
    assert "| a | 70.0 (2) | 50.0 | - |" in markdown
    assert "| c | 10.0 | - | - |" in markdown
    assert "**average** (2 tasks) | **80.0** | **40.0** | - |" in markdown


@pytest.mark.parametrize(
    ("few_shot", "source", "rte", "average"),
    [
        (False, "Table 1, full data", "75.0 / 75.3", "82.1 / 81.8"),
        (True, "Table 3, 200 examples", "49.7 / 53.9", "64.2 / 65.8"),
    ],
)
def test_table_sets_the_papers_scores_of_the_same_tasks_beside_ours(
    tmp_path: Path, few_shot: bool, source: str, rte: str, average: str
) -> None:
    for task in ("rte", "mrpc"):
        for method in ("spartan", "full", "probe"):
            _cell(tmp_path, task, method, 1, 0.5, few_shot)
    _cell(tmp_path, "stsb", "spartan", 1, 0.5, few_shot)  # incomplete: in neither average
    table = summarise(tmp_path)
    assert table["paper"]["methods"] == ["spartan", "full"], "the paper has no linear probe"
    markdown = format_markdown(table)
    assert f"| task | spartan | full | probe | paper ({source}): spartan / full |" in markdown
    assert f"| rte | 50.0 | 50.0 | 50.0 | {rte} |" in markdown
    assert f"| **average** (2 tasks) | **50.0** | **50.0** | **50.0** | {average} |" in markdown


def test_paper_scores_average_to_the_papers_own_glue_averages() -> None:
    # Transcription check: the paper's "Avg." columns are the means over the nine tasks.
    for few_shot, stated in ((False, (81.1, 80.9, 81.0, 80.9)), (True, (63.9, 64.8, 63.7, 63.3))):
        paper = paper_columns(
            few_shot, ["spartan", "pfeiffer", "houlsby", "full"], list(PAPER_TASKS), list(PAPER_TASKS)
        )
        assert [round(100 * paper["average"][m], 1) for m in paper["methods"]] == list(stated)


def test_bad_grids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown methods"):
        GridOptions(data=tmp_path, out=tmp_path, checkpoints=tmp_path, tasks=("a",), methods=("lora",))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least one task"):
        GridOptions(data=tmp_path, out=tmp_path, checkpoints=tmp_path, tasks=())
    with pytest.raises(ConfigError, match="no grid cells"):
        summarise(tmp_path)


def test_storage_table_measures_files_and_applies_the_paper_formula(
    roberta_tiny: Backbone, tmp_path: Path
) -> None:
    from memories.config import METHODS, SpartanConfig

    config = SpartanConfig(4, 2, 2)
    table = storage_table(roberta_tiny, 3, tmp_path, spartan=config)
    assert list(tmp_path.iterdir()) == [], "scratch files are removed"
    d, layers, n = roberta_tiny.hidden_size, roberta_tiny.num_layers, table["backbone_parameters"]
    assert table["paper_formula"]["per_task"] == 2 * (4 + 4 * 2) * d * layers
    assert table["paper_formula"]["for_3_tasks"] == n + 3 * table["paper_formula"]["per_task"]
    rows = table["methods"]
    assert list(rows) == list(METHODS)
    head = d * d + d + 2 * d + 2
    assert rows["spartan"]["parameters"] == (4 + 2 * 4 * 2) * d * layers + head
    for method, row in rows.items():
        fp32, fp16 = row["float32"]["bytes_per_task"], row["float16"]["bytes_per_task"]
        assert 4 * row["parameters"] < fp32 < 4 * row["parameters"] + 16384, f"{method}: tensors + a header"
        assert fp16 < fp32
        shared = 0 if method == "full" else table["backbone_file_bytes"]
        assert row["float32"]["bytes_for_3_tasks"] == shared + 3 * fp32
    assert rows["full"]["parameters_for_3_tasks"] == 3 * rows["full"]["parameters"]
    assert rows["lora-xs"]["parameters"] == 4 * 16 * 16 * layers + head, "rank 16 on four sites"
    for kind in ("spartan", "lora-xs"):
        served = rows[kind]["float16"]
        assert served["resident_bytes_per_task"] == 2 * rows[kind]["parameters"], "resident as stored"
        assert served["tasks_per_gib_resident"] == 2**30 // served["resident_bytes_per_task"]
        assert served["cold_load_ms_median"] > 0
    assert "resident_bytes_per_task" not in rows["houlsby"]["float32"], "baselines are not served"


def test_train_speed_interleaves_the_methods_and_relates_them_to_spartan(roberta_tiny: Backbone) -> None:
    before = {n: p.clone() for n, p in roberta_tiny.model.named_parameters()}
    routed = [RoutedFFNConfig(experts=4, active=2, router_rank=4)]
    report = train_speed(roberta_tiny, ("spartan", "houlsby", "probe"), 4, 16, 2, lambda _: None, routed)
    assert set(report["seconds"]) == {"spartan", "houlsby", "probe", "spartan+routed-4/2"}
    assert all(len(ts) == 2 for ts in report["seconds"].values())
    assert report["over_spartan_best"]["spartan"] == 1.0
    best = report["train_inst_per_min_best"]
    assert report["over_spartan_best"]["probe"] == pytest.approx(best["probe"] / best["spartan"], rel=1e-3)
    for name, param in roberta_tiny.model.named_parameters():
        assert torch.equal(param, before[name]), f"training steps changed the backbone's {name}"
