"""Interleaved timing: warm-up, rotation, autograd switch, per-round callback; median ratios."""

from __future__ import annotations

import pytest
import torch

from memories.lab.timing import interleaved, median_ratio


def test_interleaved_warms_up_then_rotates_the_order_every_round() -> None:
    calls: list[str] = []
    variants = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    rounds_seen: list[int] = []

    times = interleaved(variants, 3, lambda r, ts: rounds_seen.append(r))

    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert rounds_seen == [0, 1, 2]
    assert {name: len(ts) for name, ts in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0.0 for ts in times.values() for t in ts)


@pytest.mark.parametrize("grad", [False, True])
def test_interleaved_switches_autograd_for_the_variants_only(grad: bool) -> None:
    seen: list[bool] = []
    interleaved({"probe": lambda: seen.append(torch.is_grad_enabled())}, 2, grad=grad)
    assert seen == [grad] * 3
    assert torch.is_grad_enabled()


def test_interleaved_refuses_zero_rounds() -> None:
    with pytest.raises(AssertionError, match="rounds"):
        interleaved({"a": lambda: None}, 0)


def test_median_ratio_pairs_rounds_before_taking_the_median() -> None:
    # Per-round ratios 2.0, 1.0, 4.0 -> median 2.0; the ratio of medians would be 3/2 = 1.5.
    assert median_ratio([2.0, 3.0, 8.0], [1.0, 3.0, 2.0]) == 2.0
    assert median_ratio([1.0, 1.0], [3.0, 3.0]) == pytest.approx(0.3333)
    with pytest.raises(ValueError, match="shorter"):
        median_ratio([1.0, 2.0], [1.0])
