"""Early exit per task: internal classifiers after chosen layers, Zero Time Waste style.

A memory may carry exits after some of its backbone's layers (``exit_layers``, 0-based, before
the last). Exit m reads the pooled hidden state after its layer (the memory applied) and, as in
Zero Time Waste (Wołczyk et al., 2021), reuses what the exits before it computed:

    z_m     = out_m([tanh(dense_m(pooled_m)); z_{m-1}])        cascade: the previous exit's logits
    log p_m = b_m + sum_{j <= m} w_{m, j} log_softmax(z_j)     ensemble of every exit so far

``z_{-1}`` is zeros; ``w`` starts as the identity and ``b`` as zeros, so an untrained ensemble is
exit m alone. Training reads the pooled states detached (the memory is not changed by its
exits) and, as in Zero Time Waste's second stage, the ensemble's loss trains only ``w`` and ``b``.

At inference a row leaves the backbone at the first exit whose confidence (max_c p_m) exceeds its
threshold, the task's ``threshold`` unless the request gives one (1.0: never leave early); its
answer is log p_m. The other rows run on as a smaller batch (memories.model.run_batch,
memories.backbone). Exits are for classification; a regression head has no confidence to stop on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from memories.config import ExitConfig


def exit_shapes(config: ExitConfig, hidden_size: int, num_outputs: int) -> dict[str, tuple[int, ...]]:
    """Tensor name (as in the memory file, under ``exits.``) -> shape."""
    h, c, count = config.hidden, num_outputs, len(config.layers)
    shapes: dict[str, tuple[int, ...]] = {}
    for m in range(count):
        shapes[f"exits.classifiers.{m}.dense.weight"] = (h, hidden_size)
        shapes[f"exits.classifiers.{m}.dense.bias"] = (h,)
        shapes[f"exits.classifiers.{m}.out.weight"] = (c, h + c)
        shapes[f"exits.classifiers.{m}.out.bias"] = (c,)
    shapes["exits.ensemble_weight"] = (count, count)
    shapes["exits.ensemble_bias"] = (count, c)
    return shapes


class _Classifier(nn.Module):
    def __init__(self, hidden_size: int, width: int, num_outputs: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, width)
        self.out = nn.Linear(width + num_outputs, num_outputs)


class ExitClassifiers(nn.Module):
    """The trainable exits of one task; parameter names match the memory file (without ``exits.``)."""

    def __init__(self, config: ExitConfig, hidden_size: int, num_outputs: int) -> None:
        super().__init__()
        self.config = config
        self.num_outputs = num_outputs
        self.classifiers = nn.ModuleList(
            _Classifier(hidden_size, config.hidden, num_outputs) for _ in config.layers
        )
        self.ensemble_weight = nn.Parameter(torch.eye(len(config.layers)))  # [E, E], lower triangle used
        self.ensemble_bias = nn.Parameter(torch.zeros(len(config.layers), num_outputs))  # [E, C]

    def forward(self, pooled: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """pooled[m] [B, d] after exit m's layer -> (logits z_m [B, C], ensembled log p_m [B, C]) per
        exit. The cascade and the ensemble read the exits' outputs detached, so each exit's loss
        trains its own classifier and the ensemble's loss only the ensemble weights."""
        exits = PackedExits.of(self)
        logits: list[torch.Tensor] = []
        log_probs: list[torch.Tensor] = []
        for m, state in enumerate(pooled):
            previous = logits[-1].detach() if logits else None
            logits.append(exits.logits(m, state, previous))
            log_probs.append(exits.ensemble(m, [torch.log_softmax(z.detach(), dim=-1) for z in logits]))
        return logits, log_probs


@dataclass(frozen=True, eq=False)
class PackedExits:
    """A task's exits in inference form (tensors, fp32 maths); the same maths as training."""

    config: ExitConfig
    classifiers: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], ...]
    ensemble_weight: torch.Tensor  # [E, E]
    ensemble_bias: torch.Tensor  # [E, C]

    @classmethod
    def of(cls, module: ExitClassifiers) -> PackedExits:
        """A view of the module's parameters (no copy; differentiable)."""
        classifiers = tuple(
            (c.dense.weight, c.dense.bias, c.out.weight, c.out.bias)
            for c in module.classifiers
            if isinstance(c, _Classifier)
        )
        return cls(module.config, classifiers, module.ensemble_weight, module.ensemble_bias)

    @classmethod
    def from_tensors(cls, config: ExitConfig, tensors: Mapping[str, torch.Tensor]) -> PackedExits:
        """From the memory file's ``exits.*`` tensors (kept in their dtype; computed in fp32)."""
        names = ("dense.weight", "dense.bias", "out.weight", "out.bias")
        classifiers = tuple(
            tuple(tensors[f"exits.classifiers.{m}.{name}"] for name in names)
            for m in range(len(config.layers))
        )
        return cls(
            config,
            classifiers,  # type: ignore[arg-type]
            tensors["exits.ensemble_weight"],
            tensors["exits.ensemble_bias"],
        )

    @property
    def tensors(self) -> list[torch.Tensor]:
        return [t for four in self.classifiers for t in four] + [self.ensemble_weight, self.ensemble_bias]

    def logits(self, m: int, pooled: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        """z_m [B, C] from pooled [B, d] and z_{m-1} [B, C] (None: zeros, for the first exit)."""
        dense_w, dense_b, out_w, out_b = (t.float() for t in self.classifiers[m])
        hidden = torch.tanh(nn.functional.linear(pooled.float(), dense_w, dense_b))  # [B, h]
        if previous is None:
            previous = hidden.new_zeros(hidden.shape[0], out_w.shape[0])
        return nn.functional.linear(torch.cat([hidden, previous.float()], dim=-1), out_w, out_b)

    def ensemble(self, m: int, log_probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """log p_m [B, C] (normalised) from log_softmax(z_j) [B, C] of exits 0..m."""
        assert len(log_probs) == m + 1, f"exit {m} ensembles {m + 1} exits, got {len(log_probs)}"
        return self.ensemble_stacked(m, torch.stack([lp.float() for lp in log_probs]))

    def ensemble_stacked(self, m: int, stacked: torch.Tensor) -> torch.Tensor:
        """log p_m [B, C] from log_softmax(z_j) of exits 0..m stacked, [m + 1, B, C]."""
        assert stacked.shape[0] == m + 1, f"exit {m} ensembles {m + 1} exits, got {stacked.shape[0]}"
        weights = self.ensemble_weight.float()[m, : m + 1]  # [m + 1]
        combined = torch.einsum("j,jbc->bc", weights, stacked.float()) + self.ensemble_bias.float()[m]
        return torch.log_softmax(combined, dim=-1)
