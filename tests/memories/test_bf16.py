"""bf16 backbone mode: weights in bf16, fp32 fingerprint kept, the memory op in bf16, the head and
scores in fp32; close to fp32 on every backbone family, a mixed batch equals each row alone."""

from __future__ import annotations

import pytest
import torch

from memories.backbone import Backbone
from memories.backbones import load_backbone
from memories.memfile import check_backbone
from memories.model import run_batch
from memories.precision import set_precision
from tests.conftest import TINY_BACKBONES, make_memfile

TEXTS = ["a short one", "this row is quite a bit longer than the first one", "mid length text", "x"]


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_bf16_is_close_to_fp32_and_keeps_the_fingerprint(name: str) -> None:
    fp32, bf16 = load_backbone(name), set_precision(load_backbone(name), "bf16")
    assert (bf16.precision, bf16.dtype) == ("bf16", torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.model.parameters())
    assert bf16.fingerprint == fp32.fingerprint
    memfile = make_memfile(fp32)
    check_backbone(memfile.metadata, bf16)  # a memory trained on fp32 loads in bf16
    packed = memfile.to_packed()
    exact = run_batch(fp32, fp32.tokenize(TEXTS), [packed] * len(TEXTS), record_routing=True)
    fast = run_batch(bf16, bf16.tokenize(TEXTS), [packed] * len(TEXTS), record_routing=True)
    for a, b in zip(exact.logits, fast.logits, strict=True):
        assert b.dtype == torch.float32, "the head and the scores stay fp32"
        torch.testing.assert_close(b, a, atol=2e-2, rtol=0)
    assert exact.routing is not None
    assert fast.routing is not None
    chosen = [(a > 0) == (b > 0) for a, b in zip(exact.routing, fast.routing, strict=True)]
    assert float(torch.cat([c.flatten() for c in chosen]).float().mean()) > 0.9, "routing mostly holds"


@pytest.fixture(scope="module")
def bf16() -> Backbone:
    return set_precision(load_backbone("roberta-tiny-random"), "bf16")


@pytest.mark.parametrize("resident", ["float32", "bfloat16"])
def test_bf16_mixed_batch_equals_each_row_alone(bf16: Backbone, resident: str) -> None:
    packed = [make_memfile(bf16, seed=s).to_packed(resident) for s in range(len(TEXTS))]  # type: ignore[arg-type]
    assert packed[0].dtype == getattr(torch, resident)
    mixed = run_batch(bf16, bf16.tokenize(TEXTS), packed).logits
    for i, text in enumerate(TEXTS):
        alone = run_batch(bf16, bf16.tokenize([text]), [packed[i]]).logits[0]
        torch.testing.assert_close(mixed[i], alone, atol=2e-2, rtol=0)
    if resident == "bfloat16":
        assert packed[0].nbytes() * 2 == make_memfile(bf16).to_packed("float32").nbytes(), "half the bytes"


def test_bf16_resident_layers_answer_exactly_like_a_per_batch_cast(bf16: Backbone) -> None:
    memfile = make_memfile(bf16)
    batch = bf16.tokenize(TEXTS)
    cast = run_batch(bf16, batch, [memfile.to_packed("float32")] * len(TEXTS)).logits
    resident = run_batch(bf16, batch, [memfile.to_packed("auto", bf16.dtype)] * len(TEXTS)).logits
    for a, b in zip(cast, resident, strict=True):
        torch.testing.assert_close(b, a, atol=0, rtol=0)
