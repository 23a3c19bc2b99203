"""int8 backbone mode: quantised linears, fp32 fingerprint kept, outputs close to fp32, memory maths fp32."""

from __future__ import annotations

import pytest
import torch

from memories.backbone import Backbone
from memories.backbones import load_backbone
from memories.errors import ConfigError
from memories.memfile import check_backbone
from memories.model import run_batch
from memories.precision import int8_engine, set_precision
from tests.conftest import make_memfile

TEXTS = ["a short one", "this row is quite a bit longer than the first one", "mid length text", "x"]


@pytest.fixture(scope="module")
def pair() -> tuple[Backbone, Backbone]:
    """The same tiny RoBERTa twice: fp32, and int8 (quantising works in place, so load it again)."""
    return load_backbone("roberta-tiny-random"), set_precision(load_backbone("roberta-tiny-random"), "int8")


def test_int8_quantises_every_linear_but_the_first_layer_and_keeps_the_fp32_fingerprint(
    pair: tuple[Backbone, Backbone],
) -> None:
    fp32, int8 = pair
    assert int8.precision == "int8"
    first = set(map(id, int8.layer(0).modules()))
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    plain = [m for m in int8.model.modules() if type(m) is torch.nn.Linear]
    assert plain, "layer 0 keeps its fp32 linears"
    assert all(id(m) in first for m in plain), "every other linear is quantised"
    assert sum(isinstance(m, dynamic) for m in int8.model.modules()) >= 6 * (int8.num_layers - 1)
    assert int8.fingerprint == fp32.fingerprint
    check_backbone(make_memfile(fp32).metadata, int8)  # a memory trained on fp32 loads on int8


def test_int8_outputs_stay_close_to_fp32_with_a_memory(pair: tuple[Backbone, Backbone]) -> None:
    fp32, int8 = pair
    packed = make_memfile(fp32).to_packed()
    exact = run_batch(fp32, fp32.tokenize(TEXTS), [packed] * len(TEXTS)).logits
    quantised = run_batch(int8, int8.tokenize(TEXTS), [packed] * len(TEXTS)).logits
    for a, b in zip(exact, quantised, strict=True):
        assert torch.allclose(a, b, atol=2e-3), f"int8 logits {b} drifted from fp32 {a}"
        assert int(a.argmax()) == int(b.argmax())


def test_int8_mixed_batch_is_close_to_each_row_alone(pair: tuple[Backbone, Backbone]) -> None:
    """Not exact: dynamic quantisation scales activations per batch, so a row's neighbours matter a little."""
    _, int8 = pair
    packed = [make_memfile(int8, seed=s).to_packed() for s in range(len(TEXTS))]
    mixed = run_batch(int8, int8.tokenize(TEXTS), packed).logits
    for i, text in enumerate(TEXTS):
        alone = run_batch(int8, int8.tokenize([text]), [packed[i]]).logits[0]
        torch.testing.assert_close(mixed[i], alone, atol=1e-3, rtol=0)


def test_precision_errors_say_what_to_do(pair: tuple[Backbone, Backbone]) -> None:
    fp32, int8 = pair
    with pytest.raises(ConfigError, match="unknown precision .int4.; choose one of fp32, bf16, int8"):
        set_precision(fp32, "int4")
    with pytest.raises(ConfigError, match="cannot go back to fp32; load it again"):
        set_precision(int8, "fp32")
    with pytest.raises(ConfigError, match=r"fp32 layers \(7,\) out of range: the backbone has 2"):
        set_precision(load_backbone("roberta-tiny-random"), "int8", fp32_layers=(7,))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(("avx2", "fma"), "x86"), (("avx512f", "avx512_vnni"), "x86"), (("avx512_vnni", "amx_int8"), "onednn")],
)
def test_int8_packs_for_onednn_only_where_the_cpu_has_amx_int8(flags: tuple[str, ...], expected: str) -> None:
    assert int8_engine(flags, ["qnnpack", "onednn", "x86", "fbgemm"], "x86") == expected
    assert int8_engine(flags, ["qnnpack"], "qnnpack") == "qnnpack", "an engine torch lacks is never chosen"


def test_quantising_leaves_the_global_quantized_engine_as_it_was() -> None:
    before = torch.backends.quantized.engine
    set_precision(load_backbone("roberta-tiny-random"), "int8")
    assert torch.backends.quantized.engine == before
