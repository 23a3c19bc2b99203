"""The fair queue on its own: round-robin order with weights, per-tenant and total bounds, put back."""

from __future__ import annotations

import pytest

from service.errors import OverloadedError
from service.fairqueue import FairQueue


def _drain(queue: FairQueue[str]) -> list[str]:
    out = []
    while (item := queue.get_nowait()) is not None:
        out.append(item)
    return out


def test_tenants_take_turns_in_proportion_to_their_weights() -> None:
    queue: FairQueue[str] = FairQueue(100, 50, weight={"a": 1.0, "b": 2.0, "c": 0.5}.__getitem__)
    queue.put_all("a", [f"a{i}" for i in range(8)])
    queue.put_all("b", [f"b{i}" for i in range(8)])
    queue.put_all("c", [f"c{i}" for i in range(2)])
    order = _drain(queue)
    assert order[:9] == ["a0", "b0", "b1", "a1", "b2", "b3", "c0", "a2", "b4"]
    assert [x for x in order if x[0] == "a"] == [f"a{i}" for i in range(8)], "FIFO within a tenant"
    assert queue.qsize() == 0
    assert queue.tenants() == 0


def test_one_tenant_cannot_fill_the_queue_for_everyone() -> None:
    queue: FairQueue[int] = FairQueue(10, 4)
    queue.put_all("flood", [1, 2, 3])
    with pytest.raises(
        OverloadedError, match=r"tenant 'flood' has 3 texts waiting, its share of the queue \(4"
    ):
        queue.put_all("flood", [4, 5])
    assert queue.waiting("flood") == 3, "all or nothing"
    queue.put_all("other", [1, 2, 3, 4])
    queue.put_all("third", [1, 2])
    with pytest.raises(OverloadedError, match=r"the queue is full \(10 texts\)"):
        queue.put_all("fourth", [1, 2])


def test_put_back_returns_rows_to_the_front_in_order() -> None:
    queue: FairQueue[str] = FairQueue(10, 10)
    queue.put_all("a", ["a0", "a1", "a2"])
    taken = [queue.get_nowait(), queue.get_nowait()]
    assert taken == ["a0", "a1"]
    queue.put_back([("a", "a0"), ("a", "a1")])
    assert _drain(queue) == ["a0", "a1", "a2"]


def test_get_times_out_empty() -> None:
    assert FairQueue[int](1, 1).get(timeout=0.01) is None


def test_rows_before_a_request_count_each_other_tenants_weighted_share() -> None:
    queue: FairQueue[int] = FairQueue(100, 100, weight={"a": 2.0, "b": 1.0, "c": 1.0, "d": 1.0}.__getitem__)
    queue.put_all("a", list(range(20)))
    queue.put_all("b", [0, 1])
    assert queue.rows_before("b", 3) == 5 + 10, "b's 5 rows, and a's 2 turns per b turn"
    assert queue.rows_before("c", 1) == 1 + 2 + 1, "c's row, then a's 2 turns and b's 1"
    assert queue.rows_before("a", 4) == 24 + 12, (
        "a's 24 rows, and b's share: it is backlogged, so it keeps sending"
    )
    assert queue.rows_before("d", 2) == 2 + 4 + 2, "a's and b's turns; c, with nothing waiting, takes none"
