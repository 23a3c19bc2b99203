"""Early exits (memories.exits): configuration checks, file shapes, the cascade and the ensemble,
the inference form computing what the training form computes, and rows leaving mixed batches
(memories.model.run_batch) as they would leave alone."""

from __future__ import annotations

import pytest
import torch

from memories.backbone import Backbone
from memories.config import ExitConfig, SpartanConfig
from memories.errors import ConfigError
from memories.exits import ExitClassifiers, PackedExits, exit_shapes
from memories.model import TaskMemory, run_batch
from tests.conftest import TINY_BACKBONES, make_memfile


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (ExitConfig(()), "at least one exit layer"),
        (ExitConfig((3, 1)), "strictly increasing"),
        (ExitConfig((1, 1)), "strictly increasing"),
        (ExitConfig((0, 11)), r"in \[0, 10\]"),
        (ExitConfig((2,), hidden=0), "hidden width"),
        (ExitConfig((2,), threshold=0.0), r"threshold must be in \(0, 1\]"),
        (ExitConfig((2,), threshold=1.5), r"threshold must be in \(0, 1\]"),
    ],
)
def test_bad_exit_configurations_say_what_to_fix(config: ExitConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.check(num_layers=12, num_outputs=2)


def test_regression_tasks_have_no_exits() -> None:
    with pytest.raises(ConfigError, match="regression head has no confidence"):
        ExitConfig((2,)).check(num_layers=12, num_outputs=1)


def test_the_module_matches_the_file_shapes() -> None:
    config = ExitConfig((1, 4, 7), hidden=16)
    module = ExitClassifiers(config, hidden_size=32, num_outputs=3)
    named = {f"exits.{name}": tuple(p.shape) for name, p in module.state_dict().items()}
    assert named == exit_shapes(config, 32, 3)


def test_an_untrained_ensemble_is_each_exit_alone_and_the_cascade_feeds_forward() -> None:
    torch.manual_seed(0)
    config = ExitConfig((0, 1, 2), hidden=8)
    module = ExitClassifiers(config, hidden_size=16, num_outputs=4).requires_grad_(False)
    pooled = [torch.randn(5, 16) for _ in config.layers]
    logits, log_probs = module(pooled)
    for z, lp in zip(logits, log_probs, strict=True):
        torch.testing.assert_close(lp, torch.log_softmax(z, dim=-1))
    changed = [pooled[0] + 1.0, pooled[1], pooled[2]]
    later, _ = module(changed)
    assert not torch.allclose(later[1], logits[1]), "exit 1 reads exit 0's logits"


def test_the_packed_form_computes_what_the_module_computes() -> None:
    torch.manual_seed(1)
    config = ExitConfig((2, 5), hidden=8)
    module = ExitClassifiers(config, hidden_size=16, num_outputs=3).requires_grad_(False)
    torch.nn.init.normal_(module.ensemble_weight)
    tensors = {f"exits.{name}": t.clone() for name, t in module.state_dict().items()}
    packed = PackedExits.from_tensors(config, tensors)
    pooled = [torch.randn(4, 16) for _ in config.layers]
    _, want = module(pooled)
    z0 = packed.logits(0, pooled[0], None)
    z1 = packed.logits(1, pooled[1], z0)
    got = [
        packed.ensemble(0, [z0.log_softmax(-1)]),
        packed.ensemble(1, [z0.log_softmax(-1), z1.log_softmax(-1)]),
    ]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    assert len(packed.tensors) == len(tensors)


def _with_exits(backbone: Backbone, exits: ExitConfig, seed: int = 3) -> TaskMemory:
    """A random task with trained-looking memory values and exits whose answers are sure enough
    to leave at thresholds below about 0.9 (large output weights)."""
    torch.manual_seed(seed)
    task = TaskMemory(backbone.hidden_size, backbone.num_layers, 2, SpartanConfig(), exits)
    for layer in task.layers:
        torch.nn.init.normal_(layer.child_values, std=0.5)  # type: ignore[arg-type]
    assert task.exits is not None
    for classifier in task.exits.classifiers:
        torch.nn.init.normal_(classifier.out.weight, std=3.0)  # type: ignore[union-attr, arg-type]
    return task


TEXTS = ["a short one", "this row is quite a bit longer than the first", "mid", "x", "fairly long text here"]


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_mixed_batches_of_exiting_and_full_tasks_equal_each_row_alone(
    tiny_backbones: dict[str, Backbone], name: str
) -> None:
    backbone = tiny_backbones[name]
    exiting = _with_exits(backbone, ExitConfig((0,), hidden=8)).pack(backbone.pooling)
    full = make_memfile(backbone).to_packed()
    rows = [exiting, full, exiting, full, exiting]
    thresholds = [0.55, None, 0.55, None, 1.0]  # the last row never leaves early
    mixed = run_batch(backbone, backbone.tokenize(TEXTS), rows, exit_thresholds=thresholds)
    assert mixed.exit_layers[1] == mixed.exit_layers[3] == mixed.exit_layers[4] == backbone.num_layers - 1
    assert 0 in mixed.exit_layers, "some row must leave early, or the test proves nothing"
    for r, text in enumerate(TEXTS):
        alone = run_batch(backbone, backbone.tokenize([text]), [rows[r]], exit_thresholds=[thresholds[r]])
        assert alone.exit_layers[0] == mixed.exit_layers[r], f"row {r} left at another layer alone"
        torch.testing.assert_close(mixed.logits[r], alone.logits[0], atol=1e-5, rtol=1e-5)


def test_a_row_that_leaves_gets_its_exits_answer_and_one_that_never_leaves_the_heads(
    roberta_tiny: Backbone,
) -> None:
    backbone = roberta_tiny
    task = _with_exits(backbone, ExitConfig((0,), hidden=8))
    packed = task.pack(backbone.pooling)
    batch = backbone.tokenize(TEXTS)
    early = run_batch(backbone, batch, [packed] * len(TEXTS), exit_thresholds=[0.5] * len(TEXTS))
    assert early.exit_layers == [0] * len(TEXTS), "above 0.5 of two classes is every row"
    with torch.no_grad():
        outputs = task.eval().training_outputs(backbone, batch, backbone.pooling)
    torch.testing.assert_close(torch.stack(early.logits), outputs[2], atol=1e-5, rtol=1e-5)  # log p_0
    never = run_batch(backbone, batch, [packed] * len(TEXTS), exit_thresholds=[1.0] * len(TEXTS))
    assert never.exit_layers == [backbone.num_layers - 1] * len(TEXTS)
    torch.testing.assert_close(torch.stack(never.logits), outputs[0], atol=1e-5, rtol=1e-5)  # the head


def test_exits_never_change_the_memory_they_read(roberta_tiny: Backbone) -> None:
    """Same seed, with and without exits: the same memory and head (the exits draw their own
    random start), and the head's answer does not depend on the exits."""
    torch.manual_seed(5)
    plain = TaskMemory(roberta_tiny.hidden_size, roberta_tiny.num_layers, 2, SpartanConfig())
    torch.manual_seed(5)
    with_exits = TaskMemory(
        roberta_tiny.hidden_size, roberta_tiny.num_layers, 2, SpartanConfig(), ExitConfig((0,), hidden=8)
    )
    for name, tensor in plain.state_dict().items():
        torch.testing.assert_close(with_exits.state_dict()[name], tensor, atol=0, rtol=0)
    batch = roberta_tiny.tokenize(TEXTS)
    outputs = with_exits.training_outputs(roberta_tiny, batch, roberta_tiny.pooling)
    assert len(outputs) == 3, "head, then z_0 and log p_0"
    outputs[1].sum().backward()
    assert all(p.grad is None for p in with_exits.layers.parameters()), "an exit's loss reached the memory"
