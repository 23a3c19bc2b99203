"""Shape buckets and the compiled backbone (a fresh tiny RoBERTa, compiled for real)."""

from __future__ import annotations

import pytest
import torch

from memories.backbone import Backbone
from memories.backbones import load_backbone
from memories.compiled import Buckets, compile_backbone, pad_batch
from memories.config import SpartanConfig
from memories.errors import ConfigError
from memories.model import TaskMemory, run_batch
from memories.precision import set_precision

TEXTS = ["short", "a somewhat longer text for the second row", "third"]


def test_buckets_round_up_and_refuse_bad_sets() -> None:
    buckets = Buckets((1, 4, 8), (16, 64))
    assert [buckets.batch_size(n) for n in (1, 2, 4, 5, 8)] == [1, 4, 4, 8, 8]
    assert [buckets.length(n) for n in (3, 16, 17, 64)] == [16, 16, 64, 64]
    with pytest.raises(ConfigError, match="exceed the largest bucket"):
        buckets.length(65)
    with pytest.raises(ConfigError, match="strictly increasing"):
        Buckets((4, 2), (16,))
    with pytest.raises(ConfigError, match="positive"):
        Buckets((0, 2), (16,))


def test_padding_rows_and_tokens_never_change_real_rows(roberta_tiny: Backbone) -> None:
    torch.manual_seed(0)
    memory = TaskMemory(roberta_tiny.hidden_size, roberta_tiny.num_layers, 2, SpartanConfig()).pack("cls")
    batch = roberta_tiny.tokenize(TEXTS)
    assert batch.input_ids.shape[1] < 64
    padded = Buckets((4, 8), (64,)).fit(batch, roberta_tiny.tokenizer.pad_token_id)
    assert padded.input_ids.shape == (4, 64)
    assert padded.attention_mask[3].sum() == batch.attention_mask[0].sum(), "a padding row copies row 0"
    exact = run_batch(roberta_tiny, batch, [memory] * 3).logits
    bucketed = run_batch(roberta_tiny, padded, [memory] * 4).logits
    for a, b in zip(exact, bucketed[:3], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    too_long = pad_batch(batch, 3, 80, 1)
    assert Buckets((4,), (64,)).fit(too_long, 1) is too_long, "a longer batch runs at its own shape"


def test_compiled_backbone_matches_eager_in_every_bucket() -> None:
    backbone = load_backbone("roberta-tiny-random")
    torch.manual_seed(0)
    memory = TaskMemory(backbone.hidden_size, backbone.num_layers, 2, SpartanConfig()).pack("cls")
    batch = Buckets((4,), (64,)).fit(backbone.tokenize(TEXTS), backbone.tokenizer.pad_token_id)
    eager = run_batch(backbone, batch, [memory] * 4).logits
    messages: list[str] = []
    report = compile_backbone(backbone, Buckets((2, 4), (64,)), progress=messages.append)
    assert backbone.compiled
    assert set(report["max_abs_diff"]) == {"2x64", "4x64"}
    assert len(messages) == 2, "one progress line per bucket"
    compiled = run_batch(backbone, batch, [memory] * 4).logits  # the memory runs eagerly between layers
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_compile_is_refused_when_outputs_differ_or_in_int8() -> None:
    backbone = load_backbone("roberta-tiny-random")
    with pytest.raises(ConfigError, match="differs from eager"):
        compile_backbone(backbone, Buckets((1,), (16,)), tolerance=-1.0)
    assert not backbone.compiled, "a refused compile leaves the eager layers in place"
    with pytest.raises(ConfigError, match="fp32 backbone only"):
        compile_backbone(set_precision(backbone, "int8"), Buckets((1,), (16,)))
