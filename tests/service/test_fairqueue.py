"""The fair queue on its own: round-robin order with weights, per-tenant and total bounds, put back."""

from __future__ import annotations

import math
import random

import pytest

from service.errors import OverloadedError
from service.fairqueue import FairQueue, rows_meanwhile


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


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rows_before_a_request_count_each_other_tenants_weighted_share_when_it_keeps_sending() -> None:
    clock = _Clock()
    weights = {"a": 2.0, "b": 1.0, "c": 1.0, "d": 1.0}
    queue: FairQueue[int] = FairQueue(100, 100, weights.__getitem__, rate_window_s=5.0, clock=clock)
    queue.put_all("a", list(range(20)))  # a: 20 rows waiting, and 4 rows/s lately
    queue.put_all("b", [0, 1])  # b: 2 rows waiting, 0.4 rows/s
    slow = 10.0  # seconds a row: every wait is long enough for a and b to send their share
    assert queue.rows_before("b", 3, slow) == 5 + 10, "b's 5 rows, and a's 2 turns per b turn"
    assert queue.rows_before("c", 1, slow) == 1 + 2 + 1, "c's row, then a's 2 turns and b's 1"
    assert queue.rows_before("a", 4, slow) == 24 + 12, "a's 24 rows, and b's share: it keeps sending"
    assert queue.rows_before("d", 2, slow) == 2 + 4 + 2, "a's and b's turns; c never sent, takes none"
    fast = 0.01  # a wait too short for b to send more than it has waiting
    assert queue.rows_before("a", 4, fast) == 24 + 2 + 1, "b's 2 waiting rows and a tenth sent, rounded up"


def test_a_tenant_with_nothing_waiting_still_counts_what_it_sends_meanwhile() -> None:
    clock = _Clock()
    queue: FairQueue[int] = FairQueue(100, 100, rate_window_s=5.0, clock=clock)
    queue.put_all("light", list(range(50)))  # 10 rows/s lately
    while queue.get_nowait() is not None:  # served as it arrives: nothing waiting
        pass
    queue.done(["light"] * 50)
    # heavy's 20 rows at 0.1 s a row: meanwhile light sends 10 rows/s x the wait, at most its share
    # of 20; the wait x is 0.1 s x (20 + min(20, 10 x 0.1 x)): 40 rows
    assert queue.rows_before("heavy", 20, 0.1) == 40
    clock.now = 5.0  # a window later light's rate has decayed to 1/e of 10 rows/s
    assert queue.rows_before("heavy", 20, 0.1) == 20 + math.ceil(
        20 * 0.1 * 10 / math.e / (1 - 0.1 * 10 / math.e)
    )
    clock.now = 100.0
    assert queue.rows_before("heavy", 20, 0.1) == 20, "a tenant quiet for long takes nothing"


def test_the_rows_meanwhile_solve_the_equation_they_are_defined_by() -> None:
    """Against plain iteration of x = own + sum_j min(s_j, q_j + r_j t x) from the top."""
    generator = random.Random(0)
    for _ in range(200):
        own = generator.randint(1, 64)
        others = [
            (
                generator.randint(1, 64),
                generator.randint(0, 80),
                generator.choice([0.0, 5.0 * generator.random()]),
            )
            for _ in range(generator.randint(0, 6))
        ]
        t = generator.choice([0.001, 0.02, 0.2])
        x = own + sum(share for share, _, _ in others)
        for _ in range(10_000):
            x = own + sum(min(s, q + r * t * x) for s, q, r in others)
        assert rows_meanwhile(own, others, t) == pytest.approx(x, rel=1e-6, abs=1e-6), (own, others, t)


def test_rows_taken_into_the_engines_round_count_until_they_are_done() -> None:
    queue: FairQueue[int] = FairQueue(100, 100, clock=_Clock())
    queue.put_all("a", list(range(10)))
    taken = [queue.get_nowait() for _ in range(6)]  # the engine's round: 6 rows out of the queue
    assert (queue.waiting("a"), queue.held("a")) == (4, 10)
    assert queue.rows_before("a", 1, 0.01) == 11, "the 6 rows in the round run before the new one"
    queue.put_back([("a", item) for item in taken[3:]])  # the round hands 3 back
    assert (queue.waiting("a"), queue.held("a")) == (7, 10)
    queue.done(["a"] * 3)  # and answers the other 3
    assert (queue.waiting("a"), queue.held("a")) == (7, 7)
    assert queue.rows_before("a", 1, 0.01) == 8
