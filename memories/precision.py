"""Backbone precision modes: ``fp32`` (exact), ``bf16`` and ``int8``; ``auto`` is decided by
measurement on the host (:mod:`memories.autoprecision`).

``bf16`` casts the backbone's weights to bfloat16 (on CPUs with AMX or AVX512-BF16 units the
fastest mode by far; on an AVX2-only CPU about 8x slower than fp32). The SPARTAN memory op then
runs in bf16 too (its keys and values are cast per batch, or kept resident in bf16), while the
pooled output, the head and the returned scores stay fp32.

``int8`` is dynamic quantisation of the backbone's ``nn.Linear`` layers (weights stored as int8
per tensor, activations quantised on the fly per batch; PyTorch's fbgemm kernels on x86, oneDNN's
on CPUs with AMX-INT8, see :func:`int8_engine`),
except those of the encoder layers in ``fp32_layers`` (default: the first). The SPARTAN memory
and the head are not ``nn.Linear`` modules of the backbone, so their maths stays fp32.

Why the first layer stays fp32 (MiniLM, the demo memories trained in fp32, dev accuracy;
``docs/performance.md``): all layers int8 lost 1.15 points on SST-2 (0.8773 -> 0.8658) and 0.90
on BBC; keeping layer 0 in fp32 gave 0.8807 and 0.9730, the best of the variants tried (FFN
output projections in fp32: 0.8704 / 0.9707; the last layer: 0.8670; attention outputs: 0.8544).

The backbone keeps the fingerprint of its fp32 weights, so a memory trained on the fp32 backbone
loads on its int8 mode. Quantised backbones are for inference only.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Literal, get_args

from memories.errors import ConfigError

if TYPE_CHECKING:  # torch and the backbone are imported when a mode is applied, not with the names
    from memories.backbone import Backbone

Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

PrecisionSetting = Literal["auto", "fp32", "bf16", "int8"]
"""What a user asks for: a mode, or ``auto`` (the fastest mode that passes its check here)."""
PRECISION_SETTINGS: tuple[str, ...] = get_args(PrecisionSetting)

ResidentDType = Literal["auto", "float32", "float16", "bfloat16"]
"""The dtype a memory is kept in once loaded; ``auto``: the dtype its file stores (memories.model)."""
RESIDENT_DTYPES: tuple[str, ...] = get_args(ResidentDType)


FP32_LAYERS = (0,)

INT8_ONEDNN_FLAGS = ("amx_int8",)
"""CPU flags for which int8 weights are packed for oneDNN: with AMX-INT8 tiles its dynamic int8
linear ran RoBERTa-base at 3.1-3.2x fp32 against fbgemm's 1.8x (Xeon, batch 32 x 64, one thread;
docs/performance.md). Elsewhere torch's default engine (fbgemm on x86, qnnpack on ARM) packs them."""


def int8_engine(flags: tuple[str, ...], supported: list[str], default: str) -> str:
    """The quantized engine int8 weights are packed for on a CPU with ``flags``."""
    if "onednn" in supported and any(flag in flags for flag in INT8_ONEDNN_FLAGS):
        return "onednn"
    return default


def set_precision(backbone: Backbone, precision: str, fp32_layers: tuple[int, ...] = FP32_LAYERS) -> Backbone:
    """Switch ``backbone`` to ``precision`` in place (from fp32 only) and return it; int8 leaves
    the encoder layers in ``fp32_layers`` in fp32."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == backbone.precision:
        return backbone
    if backbone.precision != "fp32":
        raise ConfigError(f"a {backbone.precision} backbone cannot go back to {precision}; load it again")
    if any(not 0 <= i < backbone.num_layers for i in fp32_layers):
        raise ConfigError(f"fp32 layers {fp32_layers} out of range: the backbone has {backbone.num_layers}")
    import torch
    from torch import nn

    if precision == "bf16":
        backbone.model.to(torch.bfloat16)
        backbone.precision = precision
        return backbone
    kept = {id(module) for i in fp32_layers for module in backbone.layer(i).modules()}
    qconfig = torch.ao.quantization.default_dynamic_qconfig
    targets = {
        name: qconfig
        for name, module in backbone.model.named_modules()
        if isinstance(module, nn.Linear) and id(module) not in kept
    }
    from memories.hardware import cpu

    quantized = torch.backends.quantized
    default = quantized.engine
    # The packed weights carry their engine's kernels; the global setting only matters while packing.
    quantized.engine = int8_engine(cpu().flags, quantized.supported_engines, default)
    try:
        with warnings.catch_warnings():
            # torch 2.13 marks eager dynamic quantisation deprecated (moving to torchao) but ships it.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*quantiz.*", category=UserWarning)
            torch.ao.quantization.quantize_dynamic(backbone.model, targets, dtype=torch.qint8, inplace=True)
    finally:
        quantized.engine = default
    backbone.precision = precision
    return backbone
