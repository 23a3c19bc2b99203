"""Exit classifiers (memories.exits): configuration checks, file shapes, the cascade and the
ensemble, and the inference form computing what the training form computes."""

from __future__ import annotations

import pytest
import torch

from memories.errors import ConfigError
from memories.exits import ExitClassifiers, ExitConfig, PackedExits, exit_shapes


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
