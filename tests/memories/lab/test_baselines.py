"""Every method trains only its own tensors, never the resident backbone, and saves/loads exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memories.backbone import Backbone, Encoded
from memories.config import METHODS
from memories.data import TaskSpec
from memories.errors import BackboneMismatchError, InvalidMemoryFileError
from memories.lab.baselines import build_model, load_baseline
from memories.lab.checkpoint import file_format, read_checkpoint
from memories.memfile import read_memory
from memories.methods import SavedTask, trainable_parameters
from memories.model import run_batch

SPEC = TaskSpec("toy", "classification", ("negative", "positive"), "accuracy")


def _batch(backbone: Backbone) -> Encoded:
    return backbone.tokenize(["good", "bad movie", "a fine film indeed", "awful"], max_length=32)


def _step(model: torch.nn.Module, backbone: Backbone, batch: Encoded) -> None:
    """One SGD step with a large lr, so every trained tensor visibly moves."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    logits = model(backbone, batch, backbone.pooling)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 0, 1, 0]))
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("method", METHODS)
def test_training_moves_the_method_tensors_and_never_the_backbone(
    roberta_tiny: Backbone, method: str
) -> None:
    torch.manual_seed(0)
    model = build_model(method, roberta_tiny, 2)  # type: ignore[arg-type]
    before_backbone = {n: p.clone() for n, p in roberta_tiny.model.named_parameters()}
    before_model = {n: p.detach().clone() for n, p in model.named_parameters()}
    _step(model, roberta_tiny, _batch(roberta_tiny))
    for name, param in roberta_tiny.model.named_parameters():
        assert torch.equal(param, before_backbone[name]), f"{method} changed the backbone's {name}"
        assert param.grad is None, f"{method} put a gradient on the backbone's {name}"
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before_model[n])]
    assert moved, f"{method}: one step moved nothing"
    assert trainable_parameters(model) == sum(p.numel() for p in model.parameters())


def test_trainable_parameter_counts_order_the_methods(roberta_tiny: Backbone) -> None:
    counts = {m: trainable_parameters(build_model(m, roberta_tiny, 2)) for m in METHODS}
    backbone = sum(p.numel() for p in roberta_tiny.model.parameters())
    assert counts["probe"] == roberta_tiny.hidden_size * 2 + 2
    assert counts["probe"] < counts["pfeiffer"] < counts["houlsby"] < counts["full"]
    assert counts["full"] > backbone, "full fine-tuning trains the whole encoder plus a head"


@pytest.mark.parametrize("method", ["pfeiffer", "houlsby", "full", "probe"])
def test_baseline_checkpoint_round_trip_predicts_the_same(
    roberta_tiny: Backbone, tmp_path: Path, method: str
) -> None:
    torch.manual_seed(1)
    model = build_model(method, roberta_tiny, 2)  # type: ignore[arg-type]
    batch = _batch(roberta_tiny)
    _step(model, roberta_tiny, batch)
    path = tmp_path / f"{method}.safetensors"
    size = model.save(path, SavedTask(roberta_tiny, SPEC, "mean", 64, {"step": 1}), "float32")
    assert size == path.stat().st_size
    assert file_format(path) == "spartan-baseline"
    loaded, meta = load_baseline(path, roberta_tiny)
    assert (meta.method, meta.labels, meta.pooling, meta.summary) == (
        method,
        ["negative", "positive"],
        "mean",
        {"step": 1},
    )
    expected = model.predictor(roberta_tiny, "mean")(batch)
    torch.testing.assert_close(loaded.predictor(roberta_tiny, "mean")(batch), expected)


def test_spartan_saves_a_servable_memory_and_predicts_through_run_batch(
    roberta_tiny: Backbone, tmp_path: Path
) -> None:
    torch.manual_seed(2)
    model = build_model("spartan", roberta_tiny, 2)
    batch = _batch(roberta_tiny)
    _step(model, roberta_tiny, batch)
    path = tmp_path / "spartan.safetensors"
    model.save(path, SavedTask(roberta_tiny, SPEC, "cls", 64, {}), "float16")
    memfile = read_memory(path)
    assert (memfile.dtype, memfile.metadata.pooling, file_format(path)) == (
        "float16",
        "cls",
        "spartan-memory",
    )
    served = torch.stack(run_batch(roberta_tiny, batch, [memfile.to_packed()] * 4).logits)
    torch.testing.assert_close(model.predictor(roberta_tiny, "cls")(batch), served, atol=1e-2, rtol=1e-2)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(roberta_tiny, batch, "cls"), model.predictor(roberta_tiny, "cls")(batch)
        )


def test_checkpoints_refuse_other_backbones_and_other_files(
    tiny_backbones: dict[str, Backbone], tmp_path: Path
) -> None:
    roberta, bert = tiny_backbones["roberta-tiny-random"], tiny_backbones["bert-tiny-random"]
    path = tmp_path / "probe.safetensors"
    build_model("probe", roberta, 2).save(path, SavedTask(roberta, SPEC, "mean", 64, {}), "float32")
    with pytest.raises(BackboneMismatchError, match="roberta-tiny-random"):
        load_baseline(path, bert)
    memory = tmp_path / "memory.safetensors"
    build_model("spartan", roberta, 2).save(memory, SavedTask(roberta, SPEC, "mean", 64, {}), "float32")
    with pytest.raises(InvalidMemoryFileError, match="not a baseline checkpoint"):
        read_checkpoint(memory)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04not a safetensors file")
    assert file_format(junk) is None
    with pytest.raises(InvalidMemoryFileError, match="not a baseline checkpoint"):
        read_checkpoint(junk)


def test_a_checkpoint_whose_tensors_do_not_fit_is_refused(roberta_tiny: Backbone, tmp_path: Path) -> None:
    from memories.lab.checkpoint import CheckpointMetadata, save_checkpoint

    meta = CheckpointMetadata(
        method="probe",
        backbone=roberta_tiny.name,
        backbone_fingerprint=roberta_tiny.fingerprint,
        task="toy",
        task_type="classification",
        labels=["negative", "positive"],
        num_outputs=2,
        pooling="mean",
        max_seq_length=64,
    )
    path = tmp_path / "bad.safetensors"
    save_checkpoint(
        path, {"out.weight": torch.zeros(3, roberta_tiny.hidden_size), "out.bias": torch.zeros(3)}, meta
    )
    with pytest.raises(InvalidMemoryFileError, match="do not fit a probe model"):
        load_baseline(path, roberta_tiny)
