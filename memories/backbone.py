"""The frozen encoder every memory sits on.

:class:`Backbone` wraps a Hugging Face encoder (BERT, RoBERTa or MPNet family) and its tokenizer.
It freezes the weights, keeps the model in eval mode, and wraps every encoder layer so that a
memory can be applied to the layer's output (after the layer's own LayerNorm, as in the authors'
code). Which memory is applied is decided per forward call with :meth:`Backbone.forward`'s
``memory`` argument, so one resident backbone serves any number of tasks.

The fingerprint (sha256 of the structural config and every weight) is what memory files record,
so a memory trained for one backbone is refused by another.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from memories.errors import ConfigError
from memories.fused import FusedRouting
from memories.loraxs import SvdFactors

Pooling = Literal["cls", "mean"]
POOLINGS: tuple[Pooling, ...] = ("cls", "mean")

LayerMemory = Callable[[int, torch.Tensor], torch.Tensor]
"""Applies a memory after layer ``i``: (layer index, hidden [B, S, d]) -> hidden [B, S, d]."""

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "mpnet")

# Config fields that decide what the weights mean; volatile fields (paths, library versions,
# attention implementation) stay out of the fingerprint.
_STRUCTURAL_FIELDS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "pad_token_id",
    "position_embedding_type",
    "relative_attention_num_buckets",
)


ExitPolicy = Callable[[int, torch.Tensor], torch.Tensor]
"""Decides after layer ``i`` (its memory applied) which rows leave the backbone: (layer index,
hidden [B', S, d] of the rows still running, in batch order) -> bool [B'], True = leaves here.
The caller keeps whatever it needs of the leaving rows (e.g. an exit classifier's answer)."""


class _AllRowsLeft(Exception):
    """Every row has left the backbone: the rest of the encoder has nothing to run."""


class _MemorySlot:
    """The state of the forward call in progress: its memory and exit policy (None outside a call
    or for the bare model), and which rows of the batch still run once some have left."""

    def __init__(self) -> None:
        self.memory: LayerMemory | None = None
        self.exits: ExitPolicy | None = None
        self.batch_size = 0
        self.running: torch.Tensor | None = None  # row indices [B'] still running; None = all

    def narrow(self, value: Any) -> Any:
        """A per-row tensor the encoder passes every layer (attention mask [B, 1, S, S], MPNet's
        position bias [B, H, S, S]) cut to the rows still running; anything else as it is."""
        if self.running is None or not isinstance(value, torch.Tensor) or value.dim() == 0:
            return value
        return value.index_select(0, self.running) if value.shape[0] == self.batch_size else value


class _LayerWithMemory(nn.Module):
    """Runs one encoder layer, then the current memory on its output, then the exit policy."""

    def __init__(self, inner: nn.Module, index: int, slot: _MemorySlot) -> None:
        super().__init__()
        self.inner = inner
        self.index = index
        self.slot = slot

    def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        slot = self.slot
        if slot.running is not None:
            args = tuple(slot.narrow(a) for a in args)
            kwargs = {name: slot.narrow(v) for name, v in kwargs.items()}
        out = self.inner(hidden, *args, **kwargs)
        if slot.memory is None and slot.exits is None:
            return out
        # BERT/RoBERTa layers return the hidden state, MPNet layers a tuple led by it.
        state, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, None)
        if slot.memory is not None:
            state = slot.memory(self.index, state)
        if slot.exits is not None:
            state = self._drop_leaving(state)
        return state if rest is None else (state, *rest)

    def _drop_leaving(self, state: torch.Tensor) -> torch.Tensor:
        slot = self.slot
        assert slot.exits is not None, "no exit policy"
        leaving = slot.exits(self.index, state)  # [B'] bool
        assert leaving.shape == state.shape[:1], f"exit mask {list(leaving.shape)} for {state.shape[0]} rows"
        if not leaving.any():
            return state
        if leaving.all():
            raise _AllRowsLeft
        staying = (~leaving).nonzero().flatten()  # [B''] positions among the running rows
        running = slot.running if slot.running is not None else torch.arange(slot.batch_size)
        slot.running = running[staying]
        return state.index_select(0, staying)


def fingerprint(model: nn.Module) -> str:
    """sha256 of the structural config and every parameter (name, dtype, shape, bytes)."""
    config: Any = model.config
    digest = hashlib.sha256()
    structure = {field: getattr(config, field, None) for field in _STRUCTURAL_FIELDS}
    digest.update(json.dumps(structure, sort_keys=True).encode())
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        tensor = param.detach().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).reshape(-1).numpy().data)
    return digest.hexdigest()


@dataclass(frozen=True)
class Encoded:
    """A tokenised batch: input_ids, attention_mask [B, S] and token_type_ids [B, S] or None."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None

    def rows(self, index: torch.Tensor | slice) -> Encoded:
        """The sub-batch of the given rows (padding is left as it is)."""
        types = None if self.token_type_ids is None else self.token_type_ids[index]
        return Encoded(self.input_ids[index], self.attention_mask[index], types)


class Backbone:
    """A frozen encoder with a tokenizer, a default pooling and a fingerprint."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        tokenizer: Any,
        pooling: Pooling,
        max_positions: int,
    ) -> None:
        config: Any = model.config
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"backbone model_type {config.model_type!r} is not supported; "
                f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.pooling: Pooling = pooling
        self.max_positions = max_positions
        self.hidden_size: int = config.hidden_size
        self.num_layers: int = config.num_hidden_layers
        self.model_type: str = config.model_type
        self.fingerprint = fingerprint(model)
        self.precision = "fp32"  # memories.precision.set_precision switches it
        self.compiled = False  # memories.compiled.compile_backbone switches it
        self.routing: FusedRouting | None = None  # memories.fused.build_fused_routing makes it
        self.factors: SvdFactors | None = None  # LoRA-XS factors: memories.loraxs.load_factors makes them
        self._slot = _MemorySlot()
        encoder: Any = model.encoder
        layers: nn.ModuleList = encoder.layer
        for i in range(len(layers)):
            layers[i] = _LayerWithMemory(layers[i], i, self._slot)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the hidden states between layers (bf16 in bf16 mode, else fp32)."""
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    def _wrappers(self) -> list[_LayerWithMemory]:
        encoder: Any = self.model.encoder
        return list(encoder.layer)

    def compile_layers(self) -> list[nn.Module]:
        """Replace every encoder layer by its ``torch.compile`` form (static shapes; compiled on
        first use per shape, see memories.compiled); returns the eager layers."""
        originals = []
        for wrapper in self._wrappers():
            originals.append(wrapper.inner)
            wrapper.inner = torch.compile(wrapper.inner, dynamic=False)  # type: ignore[assignment]
        self.compiled = True
        return originals

    def restore_layers(self, originals: Sequence[nn.Module]) -> None:
        """Undo :meth:`compile_layers`."""
        for wrapper, inner in zip(self._wrappers(), originals, strict=True):
            wrapper.inner = inner
        self.compiled = False

    def layer(self, index: int) -> nn.Module:
        """Encoder layer ``index`` without its memory hook (for per-layer profiling)."""
        encoder: Any = self.model.encoder
        wrapped: _LayerWithMemory = encoder.layer[index]
        return wrapped.inner

    def describe(self) -> dict[str, Any]:
        """What a memory file records about its backbone."""
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "pooling": self.pooling,
        }

    def _check_length(self, max_length: int) -> None:
        if max_length < 8 or max_length > self.max_positions:
            raise ConfigError(
                f"max_length must be in [8, {self.max_positions}] for {self.name}, got {max_length}"
            )

    def tokenize(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, max_length: int = 128
    ) -> Encoded:
        """Tokenise single texts or (text, pair) rows, truncated to max_length, padded to the longest."""
        self._check_length(max_length)
        enc = self.tokenizer(
            list(texts),
            list(pairs) if pairs is not None else None,
            truncation="longest_first",
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        return Encoded(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))

    def encode(self, text: str, pair: str | None, max_length: int) -> dict[str, list[int]]:
        """One row's token ids (unpadded), truncated to max_length; see :meth:`collate`."""
        self._check_length(max_length)
        enc = self.tokenizer(text, pair, truncation="longest_first", max_length=max_length)
        return {name: list(ids) for name, ids in enc.items()}

    def collate(self, rows: Sequence[dict[str, list[int]]]) -> Encoded:
        """Pad rows from :meth:`encode` to the longest into one batch."""
        enc = self.tokenizer.pad(list(rows), padding=True, return_tensors="pt")
        return Encoded(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))

    @contextmanager
    def _attached(
        self, memory: LayerMemory | None, exits: ExitPolicy | None, batch_size: int
    ) -> Iterator[None]:
        slot = self._slot
        slot.memory, slot.exits, slot.batch_size, slot.running = memory, exits, batch_size, None
        try:
            yield
        finally:
            slot.memory, slot.exits, slot.running = None, None, None

    def forward(
        self, batch: Encoded, memory: LayerMemory | None = None, exits: ExitPolicy | None = None
    ) -> torch.Tensor:
        """Last hidden state, with ``memory`` applied after every layer (None = bare).

        Without ``exits``: [B, S, d]. With it, rows the policy lets leave after a layer are dropped
        from the batch there, and the rest run on as a smaller batch: the result is [B', S, d] for
        the rows that ran every layer, in batch order ([0, S, d] when all left early).
        """
        batch_size = batch.input_ids.shape[0]
        with self._attached(memory, exits, batch_size):
            try:
                return run_encoder(self.model, batch)
            except _AllRowsLeft:
                return torch.empty(0, batch.input_ids.shape[1], self.hidden_size, dtype=self.dtype)


def run_encoder(model: nn.Module, batch: Encoded) -> torch.Tensor:
    """Last hidden state [B, S, d] of a Hugging Face encoder (the backbone's or a trainable copy)."""
    kwargs: dict[str, torch.Tensor] = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if batch.token_type_ids is not None:
        kwargs["token_type_ids"] = batch.token_type_ids
    hidden: torch.Tensor = model(**kwargs).last_hidden_state
    return hidden


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """hidden [B, S, d], attention_mask [B, S] -> [B, d]: first token, or mean over real tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, S, 1]
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
