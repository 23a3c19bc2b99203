"""The file of a baseline (adapters, full fine-tuning, linear probe), for research comparisons.

Baselines are trained and evaluated by the same commands as SPARTAN memories but never served,
so they have their own small format: a safetensors file (never pickle) of the method's trainable
tensors, plus a ``__metadata__`` header with ``format = spartan-baseline`` and the JSON of
:class:`CheckpointMetadata` (method, backbone fingerprint, task, labels, pooling, training
summary). A full fine-tuning checkpoint holds the whole encoder: its size is the method's true
storage cost per task.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from memories.atomic import atomic_write
from memories.backbone import Backbone, Pooling
from memories.data import TaskType
from memories.errors import BackboneMismatchError, InvalidMemoryFileError

FORMAT_NAME: Final = "spartan-baseline"
FORMAT_VERSION = 1

BaselineMethod = Literal["pfeiffer", "houlsby", "full", "probe"]


class CheckpointMetadata(BaseModel):
    """What a baseline file records besides its tensors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = FORMAT_VERSION
    method: BaselineMethod
    backbone: str
    backbone_fingerprint: str
    task: str
    task_type: TaskType
    labels: list[str]
    num_outputs: int = Field(ge=1)
    pooling: Pooling
    max_seq_length: int = Field(ge=8)
    bottleneck: int | None = Field(default=None, ge=1)
    summary: dict[str, Any] = Field(default_factory=dict)


def save_checkpoint(
    path: Path,
    tensors: Mapping[str, torch.Tensor],
    meta: CheckpointMetadata,
    dtype: torch.dtype = torch.float32,
) -> int:
    """Write the file atomically with the tensors in ``dtype``; returns its size in bytes."""
    from safetensors.torch import save

    header = {"format": FORMAT_NAME, "checkpoint": meta.model_dump_json()}
    data = save({name: t.detach().to(dtype).contiguous() for name, t in tensors.items()}, metadata=header)
    atomic_write(path, data)
    return len(data)


def file_format(path: Path) -> str | None:
    """The ``format`` a safetensors file declares (None for anything else)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception:  # safetensors raises its own errors for files that are not safetensors
        return None
    return header.get("format")


def read_checkpoint(path: Path) -> tuple[CheckpointMetadata, dict[str, torch.Tensor]]:
    """The metadata and (fp32) tensors of a baseline file; :class:`InvalidMemoryFileError` if it is
    not one."""
    from safetensors import safe_open

    if not path.is_file():
        raise InvalidMemoryFileError(f"{path}: no such file")
    if file_format(path) != FORMAT_NAME:
        raise InvalidMemoryFileError(f"{path} is not a baseline checkpoint (format {FORMAT_NAME!r})")
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
        tensors = {name: handle.get_tensor(name).float() for name in handle.keys()}  # noqa: SIM118
    try:
        meta = CheckpointMetadata.model_validate_json(header["checkpoint"])
    except (KeyError, ValidationError) as exc:
        raise InvalidMemoryFileError(f"{path}: the checkpoint metadata is invalid: {exc}") from None
    if meta.version != FORMAT_VERSION:
        raise InvalidMemoryFileError(
            f"{path}: checkpoint version {meta.version}, this build reads {FORMAT_VERSION}"
        )
    return meta, tensors


def check_checkpoint_backbone(meta: CheckpointMetadata, backbone: Backbone) -> None:
    """Refuse a checkpoint trained on other backbone weights."""
    if meta.backbone_fingerprint != backbone.fingerprint:
        raise BackboneMismatchError(
            f"the checkpoint was trained on {meta.backbone} ({meta.backbone_fingerprint[:12]}), "
            f"not on {backbone.name} ({backbone.fingerprint[:12]})"
        )
