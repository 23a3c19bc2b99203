"""The fused routing kernel: same weights as the eager routing, exactly K parents, the same answers
through a backbone (mixed batches equal rows alone), and every way it refuses to build."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from memories import fused
from memories.backbone import Backbone
from memories.backbones import load_backbone
from memories.config import SpartanConfig
from memories.fused import FusedRoutingError, build_fused_routing, fuse_routing
from memories.model import run_batch
from memories.precision import set_precision
from memories.spartan import child_weights, spartan_dense
from tests.conftest import make_memfile

pytestmark = pytest.mark.skipif(not fused.compiler_available(), reason="no C++ compiler for inductor")

PAPER = SpartanConfig()
SMALL = SpartanConfig(num_parents=6, num_children=2, top_k=2)
TEXTS = ["a short one", "this row is quite a bit longer than the first one", "mid length text", "x"]


@pytest.fixture(scope="module")
def routing() -> fused.FusedRouting:
    return build_fused_routing([PAPER, SMALL], [torch.float32, torch.bfloat16])


@pytest.mark.parametrize("config", [PAPER, SMALL])
def test_fused_weights_equal_eager_on_untied_scores(
    routing: fused.FusedRouting, config: SpartanConfig
) -> None:
    router = routing.router(config, torch.float32)
    assert router is not None
    for tokens in (1, 7, 300):  # the token count is dynamic: no shape is special
        scores = 4 * torch.randn(tokens, config.num_keys, generator=torch.Generator().manual_seed(tokens))
        want, _ = child_weights(scores, config)
        torch.testing.assert_close(router(scores), want, atol=1e-6, rtol=0)


def test_fused_top_k_keeps_exactly_k_parents_when_every_logit_ties(routing: fused.FusedRouting) -> None:
    router = routing.router(PAPER, torch.float32)
    assert router is not None
    weights = router(torch.zeros(5, PAPER.num_keys)).view(5, PAPER.num_children, PAPER.num_parents)
    chosen = weights.sum(1) > 0  # [5, Np]
    assert chosen.sum(-1).tolist() == [PAPER.top_k] * 5
    assert chosen[:, : PAPER.top_k].all(), "ties go to the lower index"
    torch.testing.assert_close(weights.sum((1, 2)), torch.ones(5))


def test_unbuilt_shapes_and_dtypes_have_no_kernel(routing: fused.FusedRouting) -> None:
    assert routing.router(SpartanConfig(num_parents=8), torch.float32) is None
    assert routing.router(PAPER, torch.float16) is None
    assert "16x3 top-8 bfloat16" in routing.describe()


def test_dense_op_with_the_fused_router_equals_eager(routing: fused.FusedRouting) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 9, 32)
    keys, values = torch.randn(PAPER.num_keys, 32) / 6, torch.randn(PAPER.num_cells, 32)
    want = spartan_dense(x, keys, values, PAPER)
    got = spartan_dense(x, keys, values, PAPER, router=routing.router(PAPER, torch.float32))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    router = routing.router(PAPER, torch.float32)
    per_row = spartan_dense(x, keys.expand(3, -1, -1), values.expand(3, -1, -1), PAPER, router=router)
    torch.testing.assert_close(per_row, want, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def bf16_pair(routing: fused.FusedRouting) -> tuple[Backbone, Backbone]:
    """Tiny RoBERTa in bf16 twice: eager routing, and fused."""
    eager = set_precision(load_backbone("roberta-tiny-random"), "bf16")
    fast = set_precision(load_backbone("roberta-tiny-random"), "bf16")
    fast.routing = routing
    return eager, fast


def test_a_fused_bf16_backbone_answers_like_the_eager_one_and_mixed_equals_alone(
    bf16_pair: tuple[Backbone, Backbone],
) -> None:
    eager, fast = bf16_pair
    packed = [make_memfile(eager, seed=s).to_packed() for s in range(len(TEXTS))]
    batch = fast.tokenize(TEXTS)
    mixed = run_batch(fast, batch, packed).logits
    reference = run_batch(eager, batch, packed).logits
    for i, text in enumerate(TEXTS):
        alone = run_batch(fast, fast.tokenize([text]), [packed[i]]).logits[0]
        torch.testing.assert_close(mixed[i], alone, atol=2e-2, rtol=0)
        torch.testing.assert_close(mixed[i], reference[i], atol=5e-2, rtol=0)


def test_fuse_routing_settings(monkeypatch: pytest.MonkeyPatch, tiny_backbones: dict[str, Backbone]) -> None:
    fp32 = load_backbone("roberta-tiny-random")
    assert fuse_routing([fp32], "off", [PAPER]) == "eager (fused routing off; off)"
    assert fuse_routing([fp32], "auto", [PAPER]).startswith("eager (fused routing auto; no bf16 backbone")
    assert fp32.routing is None
    bf16 = set_precision(load_backbone("roberta-tiny-random"), "bf16")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert fuse_routing([bf16], "auto", [PAPER]) == "eager (fused routing auto: no C++ compiler on the PATH)"
    with pytest.raises(FusedRoutingError, match="needs a C\\+\\+ compiler"):
        fuse_routing([bf16], "on", [PAPER])
    assert bf16.routing is None
    with pytest.raises(Exception, match="unknown fused routing setting 'fast'"):
        fuse_routing([bf16], "fast", [PAPER])  # type: ignore[arg-type]


def test_a_kernel_that_differs_from_eager_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = fused._transposed_weights

    def off_by_a_little(scores_t: Tensor, np_: int, nc: int, k: int, dtype: torch.dtype) -> Tensor:
        return real(scores_t, np_, nc, k, dtype) * 1.01

    monkeypatch.setattr(fused, "_transposed_weights", off_by_a_little)
    with pytest.raises(FusedRoutingError, match="differs from eager by"):
        build_fused_routing([SMALL], [torch.float32])
