"""LoRA-XS: the backbone's SVD factors, training and serving paths, mixed batches with SPARTAN."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memories.backbone import Backbone, pool
from memories.backbones import load_backbone
from memories.config import LORA_XS_SITES, LoraXSConfig
from memories.errors import ConfigError
from memories.loraxs import (
    canonical_svd,
    compute_factors,
    factors_digest,
    load_factors,
    prepare_factors,
    site_paths,
)
from memories.methods import LoraXSModel
from memories.model import PackedMemory, run_batch
from memories.precision import set_precision
from tests.conftest import TINY_BACKBONES, make_lora_memfile, make_memfile
from tests.memories.test_model import TEXTS


def _weight(backbone: Backbone, layer: int, site: str) -> torch.Tensor:
    weight = backbone.layer(layer).get_submodule(site_paths(backbone.model_type)[site]).weight  # type: ignore[index]
    assert isinstance(weight, torch.Tensor)
    return weight


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_factors_at_full_rank_rebuild_every_adapted_weight(
    tiny_backbones: dict[str, Backbone], name: str
) -> None:
    backbone = tiny_backbones[name]
    factors = compute_factors(backbone, 64)
    assert factors.max_rank == backbone.hidden_size, "capped at the smallest side of a weight"
    for layer in range(backbone.num_layers):
        for site in LORA_XS_SITES:
            down, up_t = factors.pair(layer, site, factors.max_rank)  # B [r, in], Aᵀ [r, out]
            torch.testing.assert_close(up_t.T @ down, _weight(backbone, layer, site), atol=1e-5, rtol=1e-5)


def test_factor_signs_are_canonical_and_the_rank_r_factors_are_the_top_r(roberta_tiny: Backbone) -> None:
    factors = compute_factors(roberta_tiny, 16)
    wide = compute_factors(roberta_tiny, 32)
    for layer in range(roberta_tiny.num_layers):
        for site in LORA_XS_SITES:
            _, up_t = factors.pair(layer, site, 16)  # rows: (U_r Σ_r)ᵀ, one singular vector each
            peaks = up_t.gather(1, up_t.abs().argmax(dim=1, keepdim=True))
            assert bool((peaks > 0).all()), "each U column's largest entry is positive"
            for mine, theirs in zip(factors.pair(layer, site, 8), wide.pair(layer, site, 8), strict=True):
                torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5)
    assert factors_digest(factors) == factors_digest(compute_factors(roberta_tiny, 16)), "deterministic"


def test_factors_are_cached_on_disk_and_a_bad_cache_file_is_recomputed(
    roberta_tiny: Backbone, tmp_path: Path
) -> None:
    first = load_factors(roberta_tiny, 8, tmp_path)
    assert first.source == "computed"
    files = list((tmp_path / "lora-xs").iterdir())
    assert [f.name for f in files] == [f"{roberta_tiny.fingerprint}-r8.safetensors"]
    again = load_factors(roberta_tiny, 8, tmp_path)
    assert again.source == "disk cache"
    assert factors_digest(again) == factors_digest(first)
    files[0].write_bytes(files[0].read_bytes()[:100])  # a crash mid-write cannot do this, a disk can
    repaired = load_factors(roberta_tiny, 8, tmp_path)
    assert repaired.source == "computed"
    assert factors_digest(repaired) == factors_digest(first)
    other = load_factors(roberta_tiny, 4, tmp_path)
    assert other.max_rank == 4, "a cache of another rank is another file"


def test_factors_come_from_fp32_weights_only() -> None:
    backbone = set_precision(load_backbone("roberta-tiny-random"), "bf16")
    with pytest.raises(ConfigError, match="prepare them before switching precision"):
        compute_factors(backbone, 8)


def test_a_lora_xs_row_needs_factors_reaching_its_rank() -> None:
    backbone = load_backbone("roberta-tiny-random")
    packed = make_lora_memfile(backbone, LoraXSConfig(rank=4)).to_packed()
    batch = backbone.tokenize(TEXTS[:1])
    with pytest.raises(ConfigError, match="this backbone has no LoRA-XS factors"):
        run_batch(backbone, batch, [packed])
    backbone.factors = compute_factors(backbone, 2)
    with pytest.raises(ConfigError, match="needs factors up to rank 4; this backbone keeps them up to 2"):
        run_batch(backbone, batch, [packed])


def test_a_fresh_memory_is_the_bare_backbone_and_training_moves_only_r_and_the_head(
    roberta_tiny: Backbone,
) -> None:
    torch.manual_seed(0)
    model = LoraXSModel(roberta_tiny, 2, LoraXSConfig(rank=4))
    batch = roberta_tiny.tokenize(TEXTS)
    model.eval()
    with torch.no_grad():
        bare = model.head(pool(roberta_tiny.forward(batch), batch.attention_mask, "cls"))
        torch.testing.assert_close(model(roberta_tiny, batch, "cls"), bare)
    backbone_before = {n: p.clone() for n, p in roberta_tiny.model.named_parameters()}
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = torch.nn.functional.cross_entropy(model(roberta_tiny, batch, "cls"), torch.tensor([0, 1, 0, 1, 1]))
    loss.backward()
    optimizer.step()
    r = model.layers[0].matrix("query")  # type: ignore[operator]
    assert float(r.detach().abs().sum()) > 0, "R learns from zero: its gradient is Aᵀ g (B x)ᵀ"
    for name, param in roberta_tiny.model.named_parameters():
        assert torch.equal(param, backbone_before[name]), f"the backbone changed: {name}"
    assert not any(m._forward_hooks for m in roberta_tiny.model.modules()), "hooks removed after the pass"


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_the_serving_path_equals_the_training_path(tiny_backbones: dict[str, Backbone], name: str) -> None:
    backbone = tiny_backbones[name]
    torch.manual_seed(3)
    model = LoraXSModel(backbone, 3, LoraXSConfig(rank=6, sites=("query", "ffn_output")))
    for param in model.layers.parameters():
        torch.nn.init.normal_(param, std=0.3)
    batch = backbone.tokenize(TEXTS)
    model.eval()
    with torch.no_grad():
        trained = model(backbone, batch, backbone.pooling)
    served = model.predictor(backbone, backbone.pooling)(batch)
    torch.testing.assert_close(served, trained, atol=1e-5, rtol=1e-5)


def _mixed_tasks(backbone: Backbone) -> list[PackedMemory]:
    """SPARTAN, LoRA-XS of rank 4 (two tasks), of rank 2 on two sites only, and a 3-label SPARTAN."""
    prepare_factors(backbone)
    return [
        make_memfile(backbone, seed=1).to_packed(),
        make_lora_memfile(backbone, LoraXSConfig(rank=4), seed=2).to_packed(),
        make_lora_memfile(backbone, LoraXSConfig(rank=4), seed=3).to_packed(),
        make_lora_memfile(backbone, LoraXSConfig(rank=2, sites=("value", "ffn_output")), seed=4).to_packed(),
        make_memfile(backbone, labels=("a", "b", "c"), seed=5).to_packed(),
    ]


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_a_batch_mixing_spartan_and_lora_xs_tasks_equals_each_row_alone(
    tiny_backbones: dict[str, Backbone], name: str
) -> None:
    backbone = tiny_backbones[name]
    tasks = _mixed_tasks(backbone)
    rows = [tasks[1], tasks[0], tasks[2], tasks[3], tasks[1], tasks[4]]
    texts = [*TEXTS, TEXTS[2]]
    mixed = run_batch(backbone, backbone.tokenize(texts), rows, record_routing=True)
    assert mixed.routing is not None
    for n, (text, task, logits) in enumerate(zip(texts, rows, mixed.logits, strict=True)):
        alone = run_batch(backbone, backbone.tokenize([text]), [task]).logits[0]
        torch.testing.assert_close(logits, alone, atol=1e-5, rtol=1e-5)
        assert (mixed.routing[n] is None) == (task.kind == "lora-xs"), "parents only for SPARTAN rows"
    bare_like = run_batch(backbone, backbone.tokenize(texts[1:2]), [tasks[2]]).logits[0]
    assert not torch.allclose(mixed.logits[0], bare_like, atol=1e-3), (
        "tasks must differ, or this proves nothing"
    )
    assert not any(m._forward_hooks for m in backbone.model.modules()), "hooks removed after the batch"


def test_lora_xs_rows_in_bf16_and_int8_stay_close_to_fp32() -> None:
    fp32 = load_backbone("roberta-tiny-random")
    tasks = _mixed_tasks(fp32)
    batch = fp32.tokenize(TEXTS)
    want = torch.stack(run_batch(fp32, batch, tasks).logits[1:4])
    for mode, tolerance in (("bf16", 5e-2), ("int8", 1e-1)):
        other = load_backbone("roberta-tiny-random")
        prepare_factors(other)  # from the fp32 weights, before the switch
        set_precision(other, mode)
        got = torch.stack(run_batch(other, batch, tasks).logits[1:4])
        torch.testing.assert_close(got, want, atol=tolerance, rtol=tolerance)


def test_a_compiled_backbone_refuses_lora_xs_rows() -> None:
    backbone = load_backbone("roberta-tiny-random")
    packed = make_lora_memfile(backbone).to_packed()
    prepare_factors(backbone)
    originals = backbone.compile_layers()
    try:
        with pytest.raises(ConfigError, match="needs eager encoder layers"):
            run_batch(backbone, backbone.tokenize(TEXTS[:1]), [packed])
    finally:
        backbone.restore_layers(originals)


def test_packed_lora_xs_memory_counts_its_bytes(roberta_tiny: Backbone) -> None:
    packed = make_lora_memfile(roberta_tiny, LoraXSConfig(rank=4)).to_packed()
    d, layers = roberta_tiny.hidden_size, roberta_tiny.num_layers
    head = d * d + d + 2 * d + 2
    assert packed.nbytes() == 4 * (layers * 4 * 4 * 4 + head)
    assert packed.kind == "lora-xs"
    assert packed.exits is None


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (32, 32)])
def test_canonical_svd_matches_a_full_svd_for_wide_tall_and_square_weights(shape: tuple[int, int]) -> None:
    weight = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    down, up_t = canonical_svd(weight, 8)  # B [8, in], Aᵀ [8, out]
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    signs = torch.sign(u[u.abs().argmax(dim=0), torch.arange(u.shape[1])])
    torch.testing.assert_close(down, (vh * signs[:, None])[:8].float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(up_t, ((u * signs) * s).T[:8].float(), atol=1e-5, rtol=1e-4)


def test_canonical_svd_of_a_rank_deficient_weight_has_no_nan() -> None:
    weight = torch.zeros(16, 24)
    weight[0, 0] = 3.0
    down, up_t = canonical_svd(weight, 4)
    assert bool(torch.isfinite(down).all() and torch.isfinite(up_t).all())
    torch.testing.assert_close(up_t.T @ down, weight)
