"""The spartan command line end to end: train, eval, bench, and clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from memories.memfile import read_memory
from spartan_cli.main import main


def _train_argv(data: Path, task: str, out: Path, *extra: str) -> list[str]:
    """A short training of ``task`` on the tiny RoBERTa, with ``extra`` flags."""
    return [
        "train",
        "--task",
        task,
        "--data",
        str(data),
        "--backbone",
        "roberta-tiny-random",
        "--out",
        str(out),
        "--steps",
        "6",
        "--eval-every",
        "3",
        "--batch-size",
        "4",
        "--max-seq-length",
        "48",
        *extra,
    ]


def _train(data: Path, task: str, out: Path, *extra: str) -> None:
    assert main(_train_argv(data, task, out, *extra)) == 0


def test_a_file_written_with_string_options_still_loads() -> None:
    """Files written before options were typed keep them as Python reprs; they load as they are."""
    meta = read_memory(Path(__file__).parents[2] / "demo" / "sst2.safetensors").metadata
    assert meta.training["options"]["batch_size"] == "16"


def test_train_then_eval_classification(
    toy_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "toy.safetensors"
    _train(toy_data, "toy", out, "--parents", "4", "--children", "2", "--top-k", "2")
    summary = json.loads(capsys.readouterr().out)
    memfile = read_memory(out)
    meta = memfile.metadata
    assert (meta.task, meta.labels, meta.num_parents, meta.top_k) == ("toy", ["negative", "positive"], 4, 2)
    assert meta.training["dev_metrics"]["score"] == pytest.approx(summary["dev"]["score"], abs=1e-6)
    assert meta.training["step"] == summary["best_step"]
    options = meta.training["options"]
    assert (options["batch_size"], options["few_shot"], options["lr"]) == (4, False, None), "typed, not reprs"
    assert options["spartan"] == {"num_parents": 4, "num_children": 2, "top_k": 2, "child_temperature": 1.6}
    assert main(["eval", "--memory", str(out), "--data", str(toy_data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["examples"] == 8
    assert report["metrics"]["accuracy"] == pytest.approx(summary["dev"]["accuracy"])


def test_a_routed_ffn_training_is_recorded_and_leaves_the_backbone_dense(
    toy_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "routed.safetensors"
    _train(toy_data, "toy", out, "--routed-ffn", "4", "2")
    summary = json.loads(capsys.readouterr().out)
    options = read_memory(out).metadata.training["options"]
    assert options["routed_ffn"] == {"experts": 4, "active": 2, "router_rank": 32, "kmeans_steps": 15}
    assert main(["eval", "--memory", str(out), "--data", str(toy_data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metrics"]["score"] == pytest.approx(summary["dev"]["score"]), "evaluated dense, as served"
    bad = tmp_path / "bad.safetensors"
    assert main(_train_argv(toy_data, "toy", bad, "--routed-ffn", "5", "2")) == 2
    assert "divide the FFN's 64 neurons" in capsys.readouterr().err


def test_train_pairs_regression_and_fp16(
    toy_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "reg.safetensors"
    _train(toy_data, "toyreg", out, "--dtype", "float16")
    memfile = read_memory(out)
    assert memfile.metadata.task_type == "regression"
    assert memfile.dtype == "float16"
    capsys.readouterr()
    assert main(["eval", "--memory", str(out), "--data", str(toy_data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"pearson", "spearman", "score"} <= set(report["metrics"])
    assert (report["file_dtype"], report["resident_dtype"]) == ("float16", "auto")
    _train(toy_data, "toypair", tmp_path / "pair.safetensors")


def test_few_shot_mode_reads_fewshot200(
    toy_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(_train_argv(toy_data, "toy", tmp_path / "m.safetensors", "--few-shot"))
    assert status == 2
    assert "no fewshot200.jsonl for task 'toy'" in capsys.readouterr().err


def test_errors_are_one_line_messages(
    toy_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04junk")
    assert main(["eval", "--memory", str(bad), "--data", str(toy_data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spartan eval: error: the file is a Python pickle")
    assert "Traceback" not in err
    out = tmp_path / "toy.safetensors"
    _train(toy_data, "toy", out)
    capsys.readouterr()
    assert (
        main(["eval", "--memory", str(out), "--data", str(toy_data), "--backbone", "bert-tiny-random"]) == 2
    )
    assert "retrain it for this backbone" in capsys.readouterr().err
    assert main(["eval", "--memory", str(out), "--data", str(toy_data), "--task", "toyreg"]) == 2
    assert "the memory predicts classification" in capsys.readouterr().err
    assert main(_train_argv(toy_data, "toy", out, "--top-k", "99")) == 2
    assert "top_k must be in [1, num_parents=16]" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["houlsby", "full"])
def test_a_baseline_trains_and_evaluates_through_the_same_commands(
    toy_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], method: str
) -> None:
    out = tmp_path / f"{method}.safetensors"
    _train(toy_data, "toy", out, "--method", method, "--bottleneck", "4")
    summary = json.loads(capsys.readouterr().out)
    assert (summary["method"], summary["file_bytes"]) == (method, out.stat().st_size)
    assert main(["eval", "--memory", str(out), "--data", str(toy_data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == method
    assert report["metrics"]["score"] == pytest.approx(summary["dev"]["score"])
    assert main(["eval", "--memory", str(out), "--data", str(toy_data), "--precision", "int8"]) == 2
    assert "evaluated in fp32 only" in capsys.readouterr().err
    assert (
        main(["eval", "--memory", str(out), "--data", str(toy_data), "--backbone", "bert-tiny-random"]) == 2
    )
    assert "the checkpoint was trained on roberta-tiny-random" in capsys.readouterr().err


def test_a_lora_xs_memory_trains_and_evaluates_in_every_precision(
    toy_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPARTAN_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "lora.safetensors"
    _train(toy_data, "toy", out, "--method", "lora-xs", "--rank", "4")
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "lora-xs"
    assert list((tmp_path / "cache" / "lora-xs").iterdir()), "the factors are cached under SPARTAN_CACHE_DIR"
    for precision in ("fp32", "bf16", "int8", "auto"):
        assert (
            main(["eval", "--memory", str(out), "--data", str(toy_data), "--json", "--precision", precision])
            == 0
        )
        report = json.loads(capsys.readouterr().out)
        assert report["method"] == "lora-xs"
        if precision == "fp32":
            assert report["metrics"]["score"] == pytest.approx(summary["dev"]["score"])
    assert main(["parents", "--memory", str(out), "--data", str(toy_data)]) == 2
    assert "a lora-xs memory has no parents to label" in capsys.readouterr().err


def test_bench_measures_lora_xs_beside_spartan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # the factors' default cache
    out = tmp_path / "bench.json"
    variants = ["bare", "spartan-dense", "mixed-dense", "lora-xs", "mixed-lora-xs", "mixed-kinds"]
    argv = ["bench", "--backbone", "roberta-tiny-random", "--batch-size", "4", "--seq", "16"]
    argv += ["--rounds", "2", "--layer-rounds", "0", "--json", str(out), "--variants", *variants]
    assert main(argv) == 0
    result = json.loads(out.read_text())["results"]["16"]
    assert set(result["variants"]) == set(variants)
    assert {
        "lora-xs/bare",
        "mixed-lora-xs/lora-xs",
        "mixed-kinds/mixed-dense",
        "lora-xs/spartan-dense",
    } <= set(result["ratios"])


def test_bench_writes_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    status = main(
        [
            "bench",
            "--backbone",
            "roberta-tiny-random",
            "--batch-size",
            "4",
            "--seq",
            "16",
            "--rounds",
            "2",
            "--layer-rounds",
            "3",
            "--json",
            str(out),
        ]
    )
    assert status == 0
    report = json.loads(out.read_text())
    result = report["results"]["16"]
    assert set(result["variants"]) == {"bare", "spartan-dense", "spartan-gather", "mixed-dense"}
    assert all(len(v["seconds"]) == 2 and v["best_inst_per_min"] > 0 for v in result["variants"].values())
    assert set(result["ratios"]) == {
        "spartan-dense/bare",
        "spartan-gather/bare",
        "mixed-dense/bare",
        "mixed-dense/spartan-dense",
    }
    assert all(set(r) == {"best", "median_paired"} for r in result["ratios"].values())
    assert report["command"].startswith("spartan ")
    layer = report["layer"]["16"]
    assert set(layer["milliseconds_best"]) == {"bare", "spartan-dense", "mixed-dense"}
    assert set(layer["ratios"]) == {
        "spartan-dense/bare",
        "mixed-dense/spartan-dense",
        "pfeiffer/bare",
        "houlsby/bare",
    }
    assert set(layer["memory_op_alone_ms"]) == {"shared", "per_row", "adapter-relu", "adapter-swish"}
    assert layer["memory_op_alone_ms"]["shared"] > 0
    for ratio in ("spartan-dense/bare", "pfeiffer/bare", "houlsby/bare"):
        assert 0 < layer["ratios"][ratio]["from_op_alone"] < 1
    assert (
        layer["ratios"]["houlsby/bare"]["from_op_alone"] < layer["ratios"]["pfeiffer/bare"]["from_op_alone"]
    ), "two adapters per layer cost more than one"
    assert "| 16 | spartan-dense |" in capsys.readouterr().out


def test_backbones_lists_the_catalogue(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backbones"]) == 0
    assert "roberta-base-random" in capsys.readouterr().out


def test_bench_variant_subset_and_bad_variant(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--backbone", "roberta-tiny-random", "--batch-size", "2", "--seq", "16", "--rounds", "1"]
    assert main([*argv, "--variants", "bare", "spartan-dense", "houlsby"]) == 0
    out = capsys.readouterr().out
    assert "| 16 | spartan-dense |" in out
    assert "| 16 | houlsby |" in out
    assert "gather" not in out
    assert main([*argv, "--variants", "fast"]) == 2
    assert "unknown or no variants ['fast']" in capsys.readouterr().err


def test_bench_compiled_and_int8_variants(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", "--backbone", "roberta-tiny-random", "--batch-size", "2", "--seq", "16", "--rounds", "1"]
    variants = ["bare", "spartan-dense", "bare-compiled", "spartan-dense-compiled", "bare-int8"]
    assert main([*argv, "--layer-rounds", "2", "--variants", *variants, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    ratios = report["results"]["16"]["ratios"]
    assert {"spartan-dense-compiled/bare-compiled", "spartan-dense-compiled/spartan-dense"} <= set(ratios)
    int8_layer = report["layer"]["16-int8"]
    assert (int8_layer["precision"], int8_layer["layer_index"]) == ("int8", 1), "layer 0 stays fp32 in int8"


def test_train_in_bf16_then_eval_in_every_precision(
    toy_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bf16.safetensors"
    _train(toy_data, "toy", out, "--precision", "bf16")
    assert read_memory(out).metadata.training["options"]["precision"] == "bf16"
    capsys.readouterr()
    scores = {}
    for precision in ("fp32", "bf16", "int8", "auto"):
        argv = ["eval", "--memory", str(out), "--data", str(toy_data), "--precision", precision, "--json"]
        assert main(argv) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["precision_setting"] == precision
        scores[precision] = report["metrics"]["accuracy"]
        if precision == "auto":
            decision = report["precision_decision"]
            assert report["precision"] == decision["chosen"]
            assert {c["mode"] for c in decision["candidates"]} == {"fp32", "bf16", "int8"}
        else:
            assert report["precision"] == precision
    assert all(0.0 <= s <= 1.0 for s in scores.values())


def test_bench_bf16_and_auto_variants(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", "--backbone", "roberta-tiny-random", "--batch-size", "2", "--seq", "16", "--rounds", "1"]
    variants = ["bare", "bare-bf16", "spartan-dense-bf16", "bare-auto", "spartan-dense-auto"]
    assert main([*argv, "--layer-rounds", "2", "--variants", *variants, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    ratios = report["results"]["16"]["ratios"]
    assert {"bare-auto/bare", "spartan-dense-auto/bare-auto", "spartan-dense-bf16/bare-bf16"} <= set(ratios)
    decision = report["auto_decision"]
    assert decision["chosen"] in {c["mode"] for c in decision["candidates"]}
    assert report["layer"]["16-bf16"]["precision"] == "bf16"


def test_exits_train_beside_a_memory_or_on_a_trained_one_and_leave_the_memory_as_it_is(
    toy_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain, beside, on = (tmp_path / f"{name}.safetensors" for name in ("plain", "beside", "on"))
    _train(toy_data, "toy", plain, "--seed", "3")
    _train(toy_data, "toy", beside, "--seed", "3", "--exits", "0", "--exit-hidden", "4")
    _train(toy_data, "toy", on, "--exits", "0", "--exit-threshold", "0.7", "--exits-on", str(plain))
    capsys.readouterr()
    base = read_memory(plain).tensors
    for path in (beside, on):
        memfile = read_memory(path)
        exits = {n for n in memfile.tensors if n.startswith("exits.")}
        assert exits, f"{path.name} has no exit tensors"
        for name, tensor in base.items():
            assert torch.equal(memfile.tensors[name], tensor), f"{path.name}: {name} changed"
    meta = read_memory(on).metadata
    assert meta.exits is not None
    assert (meta.exits.layers, meta.exits.hidden, meta.exits.threshold) == ([0], 128, 0.7)

    report_path = tmp_path / "sweep.json"
    argv = ["exit-sweep", "--memory", str(on), "--data", str(toy_data), "--thresholds", "0.5", "1.0"]
    assert main([*argv, "--batch-sizes", "1", "4", "--rounds", "1", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["scores"]["0.5"]["exited_fraction"] == 1.0, "above 0.5 of two labels: every row leaves"
    assert report["scores"]["1.0"]["exited_fraction"] == 0.0
    assert set(report["speed"]["4"]) == {"no-exits", "0.5", "1.0"}
    assert report_path.with_suffix(".png").stat().st_size > 0


def test_exits_are_refused_for_a_baseline_and_without_layers(
    toy_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["train", "--task", "toy", "--data", str(toy_data), "--backbone", "roberta-tiny-random"]
    base += ["--out", str(tmp_path / "x.safetensors"), "--steps", "1"]
    assert main([*base, "--method", "probe", "--exits", "0"]) == 2
    assert "early exits are trained with a SPARTAN memory, not with 'probe'" in capsys.readouterr().err
    assert main([*base, "--exits-on", str(tmp_path / "x.safetensors")]) == 2
    assert "say which exit layers (--exits)" in capsys.readouterr().err
