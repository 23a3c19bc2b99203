"""The memory file: the unit users train, upload, version and serve.

A memory file is a safetensors file (never pickle) holding a task's tensors in fp32 or fp16, and a
``__metadata__`` header with the format version, the memory's ``kind``, the backbone it was
trained on (name and fingerprint), its shape, the kind's hyper-parameters, task type, label
names, pooling, maximum sequence length and a training summary. Two kinds:

* ``spartan`` (the default; files without a ``kind`` field are this): the tensors of a
  :class:`~memories.model.TaskMemory` (``layers.<i>.parent_keys|child_keys|child_values``,
  ``head.dense.*``, ``head.out.*``, and ``exits.*`` when the task has early exits), the
  hyper-parameters ``num_parents``, ``num_children``, ``top_k``, ``child_temperature``, and the
  exits (``exits``: layers, hidden width, threshold; absent without exits, so such a file reads
  as before);
* ``lora-xs`` (memories.loraxs): ``layers.<i>.<site>`` [r, r] per adapted site and the same
  ``head.*``, with ``lora_xs``: the rank and the sites. The SVD factors are the backbone's, never
  in the file; SPARTAN's fields and exits are refused in such a file.

Header values are strings (a safetensors rule): text fields as they are, everything else as
JSON. :func:`parse_memory` treats the bytes as untrusted: it checks the size, the framing, every
tensor entry, the metadata schema, the exact tensor set and shapes and that every value is
finite, and raises :class:`~memories.errors.InvalidMemoryFileError` naming the first failed
check. :func:`check_backbone` then decides whether the memory fits a given backbone.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from memories.atomic import atomic_write
from memories.backbone import Backbone, Pooling
from memories.config import LORA_XS_MAX_RANK, ExitConfig, LoraXSConfig, LoraXSSite, MemoryKind, SpartanConfig
from memories.data import TaskType
from memories.errors import (
    BackboneMismatchError,
    ConfigError,
    InvalidMemoryFileError,
    MemoryTooLargeError,
)
from memories.loraxs import lora_xs_shapes
from memories.model import PackedMemory, TaskMemory, head_shapes, pack_tensors
from memories.precision import ResidentDType

FORMAT_NAME: Final = "spartan-memory"
FORMAT_VERSION = 1
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 1024 * 1024

FileDType = Literal["float32", "float16"]
_SAFETENSORS_DTYPES: dict[str, FileDType] = {"F32": "float32", "F16": "float16"}
_TORCH_DTYPES: dict[FileDType, torch.dtype] = {"float32": torch.float32, "float16": torch.float16}
_RESIDENT: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_ITEM_SIZE = {"F32": 4, "F16": 2}
_FP16_MAX = 65504.0

# Header fields stored as plain text; every other field is JSON.
_TEXT_FIELDS = frozenset(
    {"format", "kind", "backbone", "backbone_fingerprint", "task_type", "pooling", "task"}
)
_SPARTAN_FIELDS = ("num_parents", "num_children", "top_k", "child_temperature")


class ExitMetadata(BaseModel):
    """A task's early exits (memories.exits): after which layers, how wide, how sure to leave."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    layers: list[int] = Field(min_length=1, max_length=256)
    hidden: int = Field(ge=1, le=16384)
    threshold: float = Field(gt=0, le=1)

    @property
    def config(self) -> ExitConfig:
        return ExitConfig(tuple(self.layers), self.hidden, self.threshold)

    @classmethod
    def of(cls, config: ExitConfig) -> ExitMetadata:
        return cls(layers=list(config.layers), hidden=config.hidden, threshold=config.threshold)


class LoraXSMetadata(BaseModel):
    """A LoRA-XS memory's rank and the sites of every layer it adapts (memories.loraxs)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    rank: int = Field(ge=1, le=LORA_XS_MAX_RANK)
    sites: list[LoraXSSite] = Field(min_length=1, max_length=4)

    @property
    def config(self) -> LoraXSConfig:
        return LoraXSConfig(self.rank, tuple(self.sites))

    @classmethod
    def of(cls, config: LoraXSConfig) -> LoraXSMetadata:
        return cls(rank=config.rank, sites=list(config.sites))


class MemoryMetadata(BaseModel):
    """The ``__metadata__`` header of a memory file, validated field by field."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    format: Literal["spartan-memory"] = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    kind: MemoryKind = "spartan"
    backbone: str = Field(min_length=1, max_length=1024)
    backbone_fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")
    hidden_size: int = Field(ge=1, le=16384)
    num_layers: int = Field(ge=1, le=256)
    num_parents: int | None = Field(default=None, ge=1, le=4096)
    num_children: int | None = Field(default=None, ge=1, le=4096)
    top_k: int | None = Field(default=None, ge=1)
    child_temperature: float | None = Field(default=None, gt=0)
    lora_xs: LoraXSMetadata | None = None
    task_type: TaskType
    labels: list[str]
    pooling: Pooling
    max_seq_length: int = Field(ge=8, le=8192)
    task: str = Field(default="", max_length=256)
    exits: ExitMetadata | None = None
    training: dict[str, Any] = Field(default_factory=dict)

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != FORMAT_VERSION:
            raise ValueError(f"format_version {value} is not supported (this build reads {FORMAT_VERSION})")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MemoryMetadata:
        given = [name for name in _SPARTAN_FIELDS if getattr(self, name) is not None]
        if self.kind == "spartan":
            missing = [name for name in _SPARTAN_FIELDS if name not in given]
            if missing:
                raise ValueError(f"a spartan memory needs {', '.join(missing)}")
            if self.lora_xs is not None:
                raise ValueError("lora_xs belongs to a lora-xs memory; this one is kind spartan")
            self._check_spartan()
        else:
            if given:
                raise ValueError(f"a lora-xs memory has no {', '.join(given)} (SPARTAN hyper-parameters)")
            if self.lora_xs is None:
                raise ValueError("a lora-xs memory needs lora_xs: its rank and sites")
            if self.exits is not None:
                raise ValueError("early exits are trained with SPARTAN memories; a lora-xs memory has none")
            try:
                LoraXSConfig(self.lora_xs.rank, tuple(self.lora_xs.sites))
            except ConfigError as exc:
                raise ValueError(f"lora_xs: {exc}") from None
        if self.task_type == "classification":
            if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
                raise ValueError("a classification memory needs at least 2 distinct label names")
            if any(not label or len(label) > 128 for label in self.labels):
                raise ValueError("label names must be 1-128 characters")
        elif self.labels:
            raise ValueError("a regression memory has no label names")
        if self.exits is not None:
            try:
                self.exits.config.check(self.num_layers, self.num_outputs)
            except ConfigError as exc:
                raise ValueError(f"exits: {exc}") from None
        return self

    def _check_spartan(self) -> None:
        np_, k, temperature = self.num_parents, self.top_k, self.child_temperature
        assert np_ is not None, "checked by _consistent"
        assert k is not None, "checked by _consistent"
        assert temperature is not None, "checked by _consistent"
        if k > np_:
            raise ValueError(f"top_k {self.top_k} exceeds num_parents {self.num_parents}")
        if not math.isfinite(temperature):
            raise ValueError("child_temperature must be finite")

    @classmethod
    def for_backbone(
        cls,
        backbone: Backbone,
        config: SpartanConfig | LoraXSConfig,
        labels: Sequence[str],
        pooling: Pooling,
        max_seq_length: int,
        task: str = "",
        training: dict[str, Any] | None = None,
        exits: ExitConfig | None = None,
    ) -> MemoryMetadata:
        """Metadata of a memory for ``backbone``: its identity and shape, its kind and
        hyper-parameters (``config``'s), the labels (none: a regression task), the early exits if any."""
        kind_fields: dict[str, Any] = (
            {"kind": "lora-xs", "lora_xs": LoraXSMetadata.of(config)}
            if isinstance(config, LoraXSConfig)
            else {
                "num_parents": config.num_parents,
                "num_children": config.num_children,
                "top_k": config.top_k,
                "child_temperature": config.child_temperature,
            }
        )
        return cls(
            backbone=backbone.name,
            backbone_fingerprint=backbone.fingerprint,
            hidden_size=backbone.hidden_size,
            num_layers=backbone.num_layers,
            **kind_fields,
            task_type="classification" if labels else "regression",
            labels=list(labels),
            pooling=pooling,
            max_seq_length=max_seq_length,
            task=task,
            exits=ExitMetadata.of(exits) if exits is not None else None,
            training=training or {},
        )

    @property
    def spartan_config(self) -> SpartanConfig:
        """A SPARTAN memory's hyper-parameters; ConfigError for another kind."""
        np_, nc, k, temperature = self.num_parents, self.num_children, self.top_k, self.child_temperature
        if self.kind != "spartan" or np_ is None or nc is None or k is None or temperature is None:
            raise ConfigError(f"this is a {self.kind} memory, not a SPARTAN one")
        return SpartanConfig(np_, nc, k, temperature)

    @property
    def memory_config(self) -> SpartanConfig | LoraXSConfig:
        """The hyper-parameters of this memory's kind."""
        return self.lora_xs.config if self.lora_xs is not None else self.spartan_config

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape, exactly the tensors a file of this metadata holds."""
        if self.lora_xs is not None:
            shapes = lora_xs_shapes(self.num_layers, self.lora_xs.config)
            return shapes | head_shapes(self.hidden_size, self.num_outputs)
        return TaskMemory.shapes(
            self.hidden_size, self.num_layers, self.num_outputs, self.spartan_config, self.exit_config
        )

    @property
    def num_outputs(self) -> int:
        return len(self.labels) if self.task_type == "classification" else 1

    @property
    def exit_config(self) -> ExitConfig | None:
        return self.exits.config if self.exits is not None else None

    def to_header(self) -> dict[str, str]:
        """String-valued safetensors metadata: text as is, everything else as JSON. Fields a kind
        does not have are left out, as is ``kind`` and ``exits`` for a SPARTAN memory without
        exits: such a file is what builds before LoRA-XS and exits wrote."""
        absent = {name for name in (*_SPARTAN_FIELDS, "lora_xs", "exits") if getattr(self, name) is None}
        fields = self.model_dump(exclude=absent | ({"kind"} if self.kind == "spartan" else set()))
        return {
            name: value if name in _TEXT_FIELDS else json.dumps(value, sort_keys=True)
            for name, value in fields.items()
        }

    @classmethod
    def from_header(cls, header: dict[str, str]) -> MemoryMetadata:
        """Inverse of :meth:`to_header`; raises InvalidMemoryFileError naming the bad field."""
        if header.get("format") != FORMAT_NAME:
            raise InvalidMemoryFileError(
                f"metadata field 'format' must be {FORMAT_NAME!r}, got {header.get('format')!r}: "
                "this safetensors file is not a SPARTAN memory"
            )
        values: dict[str, Any] = {}
        for name, raw in header.items():
            if name in _TEXT_FIELDS or name not in cls.model_fields:
                values[name] = raw
                continue
            try:
                values[name] = json.loads(raw)
            except json.JSONDecodeError:
                raise InvalidMemoryFileError(
                    f"metadata field {name!r} is not valid JSON: {raw[:80]!r}"
                ) from None
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise InvalidMemoryFileError(f"bad metadata: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "header"
    return f"{where}: {error['msg']}"


@dataclass(frozen=True)
class MemoryFile:
    """A validated memory: metadata and tensors (fp32 or fp16, as stored)."""

    metadata: MemoryMetadata
    tensors: dict[str, torch.Tensor]
    sha256: str = ""

    @property
    def dtype(self) -> FileDType:
        first = next(iter(self.tensors.values()))
        return "float16" if first.dtype == torch.float16 else "float32"

    @classmethod
    def from_task(cls, task: torch.nn.Module, metadata: MemoryMetadata) -> MemoryFile:
        """The memory of a trained module whose ``state_dict`` names are the file's tensors."""
        tensors = {name: t.detach().float().clone() for name, t in task.state_dict().items()}
        memfile = cls(metadata, tensors)
        _check_tensors(metadata, {n: tuple(t.shape) for n, t in tensors.items()})
        return memfile

    def to_task_memory(self) -> TaskMemory:
        """A trainable fp32 module holding these tensors (e.g. to continue training)."""
        meta = self.metadata
        task = TaskMemory(
            meta.hidden_size, meta.num_layers, meta.num_outputs, meta.spartan_config, meta.exit_config
        )
        task.load_state_dict({name: t.float() for name, t in self.tensors.items()})
        return task

    def to_packed(
        self, resident: ResidentDType = "float32", compute: torch.dtype = torch.float32
    ) -> PackedMemory:
        """The inference form, kept in fp32, fp16, bf16, or ``"auto"``: in the dtype the file
        stores, except that on a bf16 backbone (``compute``) the layers are kept in bf16, the dtype
        every batch would cast them to (the same answers in half the bytes, and no per-batch cast);
        the head keeps the file's dtype, as it runs in fp32."""
        meta = self.metadata
        stored = _TORCH_DTYPES[self.dtype]
        if resident != "auto":
            dtype = head_dtype = _RESIDENT[resident]
        else:
            dtype, head_dtype = (torch.bfloat16 if compute == torch.bfloat16 else stored), stored
        return pack_tensors(
            self.tensors,
            meta.memory_config,
            meta.num_layers,
            meta.pooling,
            dtype,
            head_dtype,
            meta.exit_config,
        )

    def to_bytes(self, dtype: FileDType = "float32") -> bytes:
        from safetensors.torch import save

        target = _TORCH_DTYPES[dtype]
        tensors = {}
        for name, tensor in self.tensors.items():
            if dtype == "float16" and tensor.abs().max().item() > _FP16_MAX:
                raise ConfigError(f"tensor {name} has values beyond the fp16 range; save as float32")
            tensors[name] = tensor.to(target).contiguous()
        data: bytes = save(tensors, metadata=self.metadata.to_header())
        return data

    def save(self, path: Path, dtype: FileDType = "float32") -> str:
        """Write atomically (temp file in the same directory, fsync, rename); returns the sha256."""
        data = self.to_bytes(dtype)
        atomic_write(path, data)
        return hashlib.sha256(data).hexdigest()


def _sniff_foreign(data: bytes) -> str | None:
    # A pickle (protocol 2-5) opens with 0x80 0x02-0x05; so does a safetensors file whose header
    # length is 640-1535 bytes and 128 mod 256, but its JSON header then starts at byte 8.
    if data[:1] == b"\x80" and len(data) > 1 and 2 <= data[1] <= 5 and data[8:9] != b"{":
        return "a Python pickle (e.g. torch.save output)"
    if data[:4] == b"PK\x03\x04":
        return "a zip archive (the format of torch.save)"
    return None


def _parse_header(data: bytes) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Framing checks; returns (metadata, tensor entries). Never looks at tensor bytes."""
    foreign = _sniff_foreign(data)
    if foreign:
        raise InvalidMemoryFileError(f"the file is {foreign}; memory files must be safetensors, never pickle")
    if len(data) < 8:
        raise InvalidMemoryFileError(
            f"truncated file: {len(data)} bytes, a safetensors file starts with an 8-byte header length"
        )
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES:
        raise InvalidMemoryFileError(
            f"not a safetensors file, or a corrupt one: header length {header_len} "
            f"exceeds {MAX_HEADER_BYTES} bytes"
        )
    if 8 + header_len > len(data):
        raise InvalidMemoryFileError(
            f"truncated file: the header claims {header_len} bytes but only {len(data) - 8} follow"
        )
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidMemoryFileError("not a safetensors file: the header is not JSON") from None
    if not isinstance(header, dict):
        raise InvalidMemoryFileError("not a safetensors file: the header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidMemoryFileError(
            "the safetensors header has no string-valued __metadata__ (not a SPARTAN memory)"
        )
    data_len = len(data) - 8 - header_len
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise InvalidMemoryFileError(f"tensor {name!r}: malformed header entry")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _SAFETENSORS_DTYPES:
            raise InvalidMemoryFileError(
                f"tensor {name!r} has dtype {dtype}; memory files hold F32 or F16 only"
            )
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
            raise InvalidMemoryFileError(f"tensor {name!r}: shape {shape!r} is not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise InvalidMemoryFileError(f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]")
        begin, end = offsets
        if end - begin != math.prod(shape) * _ITEM_SIZE[dtype]:
            raise InvalidMemoryFileError(
                f"tensor {name!r}: byte range {offsets} does not match shape {shape}"
            )
        if begin < 0 or end > data_len:
            raise InvalidMemoryFileError(
                f"truncated file: tensor {name!r} ends at byte {end} of the data "
                f"but the data has {data_len} bytes"
            )
        spans.append((begin, end))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise InvalidMemoryFileError("corrupt file: tensor byte ranges overlap or leave gaps")
        position = end
    if position != data_len:
        raise InvalidMemoryFileError(
            f"corrupt file: {data_len - position} trailing bytes after the last tensor"
        )
    return metadata, header


def _check_tensors(meta: MemoryMetadata, shapes: dict[str, tuple[int, ...]]) -> None:
    expected = meta.tensor_shapes()
    missing = sorted(set(expected) - set(shapes))
    if missing:
        raise InvalidMemoryFileError(
            f"missing tensors: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
        )
    extra = sorted(set(shapes) - set(expected))
    if extra:
        raise InvalidMemoryFileError(
            f"unexpected tensors: {', '.join(extra[:5])}" + (" ..." if len(extra) > 5 else "")
        )
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise InvalidMemoryFileError(
                f"tensor {name} has shape {list(shapes[name])}, the metadata implies {list(shape)}"
            )


def parse_memory(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> MemoryFile:
    """Validate untrusted bytes completely and return the memory; raises InvalidMemoryFileError."""
    if len(data) > max_bytes:
        raise MemoryTooLargeError(f"the file is {len(data)} bytes; the limit is {max_bytes} bytes")
    header, entries = _parse_header(data)
    meta = MemoryMetadata.from_header(header)
    _check_tensors(meta, {name: tuple(entry["shape"]) for name, entry in entries.items()})
    dtypes = {entry["dtype"] for entry in entries.values()}
    if len(dtypes) != 1:
        raise InvalidMemoryFileError(f"tensors mix dtypes {sorted(dtypes)}; use one of F32 or F16 for all")
    from safetensors.torch import load

    tensors: dict[str, torch.Tensor] = load(data)
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):  # counted only on the error path
            bad = int((~torch.isfinite(tensor)).sum())
            raise InvalidMemoryFileError(f"tensor {name} has {bad} non-finite values (NaN or inf)")
    return MemoryFile(meta, tensors, hashlib.sha256(data).hexdigest())


def read_memory(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> MemoryFile:
    """Read and validate a memory file from disk."""
    size = path.stat().st_size
    if size > max_bytes:
        raise MemoryTooLargeError(f"{path} is {size} bytes; the limit is {max_bytes} bytes")
    return parse_memory(path.read_bytes(), max_bytes)


def check_backbone(meta: MemoryMetadata, backbone: Backbone) -> None:
    """Raise BackboneMismatchError unless the memory was trained on exactly this backbone (and,
    for a LoRA-XS memory, the backbone has the factors its rank needs)."""
    if meta.hidden_size != backbone.hidden_size or meta.num_layers != backbone.num_layers:
        raise BackboneMismatchError(
            f"the memory has {meta.num_layers} layers of hidden size {meta.hidden_size}; "
            f"backbone {backbone.name!r} has {backbone.num_layers} layers "
            f"of hidden size {backbone.hidden_size}"
        )
    if meta.backbone_fingerprint != backbone.fingerprint:
        raise BackboneMismatchError(
            f"the memory was trained on backbone {meta.backbone!r} "
            f"(fingerprint {meta.backbone_fingerprint[:12]}), not on {backbone.name!r} "
            f"(fingerprint {backbone.fingerprint[:12]}); retrain it for this backbone"
        )
    if meta.max_seq_length > backbone.max_positions:
        raise BackboneMismatchError(
            f"max_seq_length {meta.max_seq_length} exceeds the backbone's {backbone.max_positions} positions"
        )
    if meta.lora_xs is not None:
        factors, rank = backbone.factors, meta.lora_xs.rank
        if factors is None:
            raise BackboneMismatchError(
                "this backbone serves no LoRA-XS memories: it has no LoRA-XS factors (a server "
                "prepares them unless its lora_xs_max_rank is 0 or its layers are compiled)"
            )
        if rank > factors.max_rank:
            raise BackboneMismatchError(
                f"the memory is a rank-{rank} LoRA-XS memory; this backbone keeps LoRA-XS factors up "
                f"to rank {factors.max_rank}: retrain at a rank <= {factors.max_rank}, "
                "or raise lora_xs_max_rank"
            )
