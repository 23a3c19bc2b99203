"""Backbone precision modes: ``fp32`` (exact, the default) and ``int8``.

``int8`` is dynamic quantisation of the backbone's ``nn.Linear`` layers (weights stored as int8
per tensor, activations quantised on the fly per batch; PyTorch's fbgemm kernels on x86). The
SPARTAN memory and the head are not ``nn.Linear`` modules of the backbone, so their maths stays
fp32. The backbone keeps the fingerprint of its fp32 weights: a memory trained on the fp32
backbone loads on its int8 mode (how much that costs in accuracy is measured, see
``docs/performance.md``). Quantised backbones are for inference only.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Literal, get_args

from memories.errors import ConfigError

if TYPE_CHECKING:  # torch and the backbone are imported when a mode is applied, not with the names
    from memories.backbone import Backbone

Precision = Literal["fp32", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def set_precision(backbone: Backbone, precision: str) -> Backbone:
    """Switch ``backbone`` to ``precision`` in place (fp32 -> int8 only) and return it."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == backbone.precision:
        return backbone
    if backbone.precision != "fp32":
        raise ConfigError(f"a {backbone.precision} backbone cannot go back to {precision}; load it again")
    import torch
    from torch import nn

    with warnings.catch_warnings():
        # torch 2.13 marks eager dynamic quantisation deprecated (moving to torchao) but ships it.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantiz.*", category=UserWarning)
        torch.ao.quantization.quantize_dynamic(backbone.model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    backbone.precision = precision
    return backbone
