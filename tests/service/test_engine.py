"""The engine thread: length bucketing, mixed tasks in one batch, admission all-or-nothing, fair share."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from memories.backbone import Backbone
from memories.model import run_batch
from service.cache import LoadedMemory
from service.engine import Engine, RowRequest
from service.errors import DeadlineExceededError, OverloadedError, ShuttingDownError
from service.tasks import TaskRef
from tests.conftest import make_memfile


def _loaded(backbone: Backbone, task: str, seed: int, tenant: str = "acme") -> LoadedMemory:
    memfile = make_memfile(backbone, seed=seed)
    packed = memfile.to_packed()
    return LoadedMemory(TaskRef(tenant, task), 1, memfile.metadata, packed, packed.nbytes())


def test_bucketing_groups_rows_by_length_and_answers_match_single_runs(roberta_tiny: Backbone) -> None:
    memories = [_loaded(roberta_tiny, "a", 1), _loaded(roberta_tiny, "b", 2)]
    texts = [
        "short" if i % 2 else "a much longer text that pads every short row badly " * 2 for i in range(16)
    ]
    rows = [RowRequest(text, None, memories[i % 2]) for i, text in enumerate(texts)]
    engine = Engine(roberta_tiny, max_batch_size=8, max_wait_s=0.05, threads=1)
    engine.start()
    try:
        results = asyncio.run(engine.submit(rows, time.monotonic() + 60))
    finally:
        engine.stop()
    assert engine.stats.batches == 2, "16 rows in batches of 8"
    assert engine.stats.tokens / engine.stats.padded_tokens > 0.95, "short and long rows were not mixed"
    for row, result in zip(rows, results, strict=True):
        alone = run_batch(roberta_tiny, roberta_tiny.tokenize([row.text]), [row.memory.packed]).logits[0]
        torch.testing.assert_close(torch.tensor(result.logits), alone, atol=1e-5, rtol=1e-5)


def test_admission_is_all_or_nothing_and_stops_at_shutdown(roberta_tiny: Backbone) -> None:
    memory = _loaded(roberta_tiny, "a", 1)
    engine = Engine(roberta_tiny, queue_size=3, threads=1)
    engine.start()

    async def scenario() -> None:
        with pytest.raises(OverloadedError, match=r"queue is full \(3 texts\)"):
            await engine.submit([RowRequest("x", None, memory)] * 4, time.monotonic() + 5)
        assert engine.queued == 0, "a refused request leaves nothing queued"
        assert len(await engine.submit([RowRequest("x", None, memory)] * 3, time.monotonic() + 5)) == 3

    asyncio.run(scenario())
    engine.stop()

    async def after_stop() -> None:
        with pytest.raises(ShuttingDownError, match="shutting down"):
            await engine.submit([RowRequest("x", None, memory)], time.monotonic() + 1)

    asyncio.run(after_stop())


def test_partial_remainder_is_carried_and_still_answered(roberta_tiny: Backbone) -> None:
    memory = _loaded(roberta_tiny, "a", 1)
    engine = Engine(roberta_tiny, max_batch_size=8, max_wait_s=0.01, threads=1)
    engine.start()
    try:
        rows = [RowRequest(f"text number {i}", None, memory) for i in range(20)]
        results = asyncio.run(engine.submit(rows, time.monotonic() + 60))
    finally:
        engine.stop()
    assert len(results) == 20
    assert engine.stats.batch_sizes == {8: 2, 4: 1}, "two full batches first, the carried 4 rows after"


def test_each_row_is_cut_to_its_memory_limit_and_a_row_over_the_backbone_limit_fails_alone(
    roberta_tiny: Backbone,
) -> None:
    short, long = _loaded(roberta_tiny, "a", 1), _loaded(roberta_tiny, "b", 2)
    meta = long.metadata.model_copy(update={"max_seq_length": 16})
    clipped = LoadedMemory(TaskRef("acme", "c"), 1, meta, long.packed, long.nbytes)
    too_long = LoadedMemory(
        TaskRef("acme", "d"), 1, meta.model_copy(update={"max_seq_length": 4096}), long.packed, long.nbytes
    )
    text = "a text that is longer than sixteen tokens once it has been split into word pieces " * 2
    rows = [
        RowRequest(text, None, short),
        RowRequest(text, "and a second sentence", short),
        RowRequest(text, None, clipped),
        RowRequest("x", None, too_long),
    ]
    engine = Engine(roberta_tiny, max_batch_size=8, max_wait_s=0.01, threads=1)
    engine.start()

    async def each() -> list[object]:
        return await asyncio.gather(
            *(engine.submit([row], time.monotonic() + 60) for row in rows), return_exceptions=True
        )

    try:
        outcomes = asyncio.run(each())
    finally:
        engine.stop()
    assert "max_length must be in [8, " in str(outcomes[3]), "the row over the backbone's limit fails"
    answered = [outcome[0] for outcome in outcomes[:3]]  # type: ignore[index]
    assert [a.tokens for a in answered][2] == 16, "truncated to its memory's limit"
    for row, result in zip(rows[:3], answered, strict=True):
        limit = row.memory.metadata.max_seq_length
        pairs = [row.pair] if row.pair is not None else None
        batch = roberta_tiny.tokenize([row.text], pairs, max_length=limit)
        alone = run_batch(roberta_tiny, batch, [row.memory.packed]).logits[0]
        torch.testing.assert_close(torch.tensor(result.logits), alone, atol=1e-5, rtol=1e-5)


def test_a_light_tenant_waits_for_one_batch_at_most_while_another_floods(roberta_tiny: Backbone) -> None:
    heavy, light = _loaded(roberta_tiny, "a", 1, "flood"), _loaded(roberta_tiny, "b", 2, "light")
    engine = Engine(roberta_tiny, max_batch_size=8, max_wait_s=0.0, threads=1, bucket_factor=4)
    engine.start()
    waited: list[int] = []
    flooding: list[bool] = []  # was the flood still queued when the light request came?
    texts = ["short", "a somewhat longer flood text " * 3, "the longest flood text of them all " * 6]

    async def scenario() -> None:
        deadline = time.monotonic() + 120
        flood = [
            asyncio.ensure_future(
                engine.submit([RowRequest(texts[i % 3], None, heavy) for i in range(40)], deadline)
            )
            for _ in range(8)
        ]
        for i in range(12):
            await asyncio.sleep(0.003 * (i % 4))  # into the flood, at different points of a round
            submitted = engine.stats.batches
            flooding.append(not all(f.done() for f in flood))
            (answer,) = await engine.submit([RowRequest(texts[i % 3], None, light)], deadline)
            waited.append(answer.batch - submitted)  # counted in the engine: not after the loop wakes
        await asyncio.gather(*flood)

    try:
        asyncio.run(scenario())
    finally:
        engine.stop()
    assert engine.stats.rows == 332
    assert max(waited) <= 2, f"batches finished between submit and answer: {waited}"
    assert all(flooding), "the flood must outlast the light requests: make it larger"
    assert engine.stats.put_back > 0, "rounds handed the flood's rows back for the light ones"
    assert engine.held("flood") == engine.held("light") == 0, "every answered row is done"


def test_max_batch_tokens_splits_long_rows_into_smaller_batches(roberta_tiny: Backbone) -> None:
    memory = _loaded(roberta_tiny, "a", 1)
    texts = ["short"] * 8 + ["a long text of many words that pads to many tokens " * 3] * 8
    engine = Engine(roberta_tiny, max_batch_size=8, max_wait_s=0.05, threads=1, max_batch_tokens=200)
    engine.start()
    try:
        rows = [RowRequest(text, None, memory) for text in texts]
        results = asyncio.run(engine.submit(rows, time.monotonic() + 60))
    finally:
        engine.stop()
    long_tokens = results[-1].tokens
    assert long_tokens * 4 > 200, "the long rows must not fit 4 to a batch"
    assert engine.stats.batch_sizes[8] == 1, "the short rows fit one batch of 8"
    assert max(size for size in engine.stats.batch_sizes if size != 8) * long_tokens <= 200
    assert engine.stats.rows == 16


@pytest.mark.parametrize("admit_by_deadline", [True, False])
def test_a_request_the_queue_cannot_serve_in_time_is_refused_at_once(
    roberta_tiny: Backbone, admit_by_deadline: bool
) -> None:
    memory = _loaded(roberta_tiny, "a", 1)
    engine = Engine(roberta_tiny, threads=1, admit_by_deadline=admit_by_deadline)
    engine.start()

    async def scenario() -> None:
        assert engine.row_seconds is None
        await engine.submit([RowRequest("warm up", None, memory)] * 4, time.monotonic() + 30)
        for _ in range(100):  # the round is folded in just after its rows are answered
            if engine.row_seconds is not None:
                break
            await asyncio.sleep(0.01)
        assert engine.row_seconds is not None, "measured on the round that ran"
        too_soon = time.monotonic() + engine.row_seconds / 10  # less than one row's work
        rows = [RowRequest("x", None, memory)] * 2
        if admit_by_deadline:
            with pytest.raises(OverloadedError, match="more than its 0.0 s deadline") as refused:
                await engine.submit(rows, too_soon)
            assert refused.value.retry_after > 0
            assert (engine.stats.refused_late, engine.queued) == (1, 0), "nothing was queued"
        else:
            with pytest.raises(DeadlineExceededError):
                await engine.submit(rows, too_soon)
            assert engine.stats.refused_late == 0
        assert len(await engine.submit(rows, time.monotonic() + 30)) == 2, "in time: served"
        for _ in range(100):  # the late rows are dropped by the engine's next round
            if not engine.held("acme"):
                break
            await asyncio.sleep(0.01)
        assert engine.held("acme") == 0, "expired rows are done too"
        stats = engine.admissions["acme"]  # the requests admitted with an estimate
        assert (stats.admitted, stats.late) == ((1, 0) if admit_by_deadline else (2, 1))
        assert stats.estimate_seconds > 0
        assert 0 < stats.wait_seconds < stats.left_seconds
        assert stats.late_left_seconds == (0.0 if admit_by_deadline else pytest.approx(0.0, abs=0.01))

    try:
        asyncio.run(scenario())
    finally:
        engine.stop()


def test_the_time_per_row_counts_the_whole_round_not_only_the_batch(roberta_tiny: Backbone) -> None:
    """A round that spends most of its time outside the batch (here the collection wait) counts
    it: what admission needs is how fast the queue drains, not how fast a batch computes."""
    memory = _loaded(roberta_tiny, "a", 1)
    engine = Engine(roberta_tiny, max_wait_s=0.2, threads=1)
    engine.start()

    async def scenario() -> None:
        await engine.submit([RowRequest("one", None, memory)], time.monotonic() + 30)
        for _ in range(100):
            if engine.row_seconds is not None:
                break
            await asyncio.sleep(0.01)

    try:
        asyncio.run(scenario())
        assert engine.row_seconds is not None
        assert engine.row_seconds >= 0.2, "the 0.2 s collection wait is part of the round"
        assert engine.stats.busy_seconds < 0.2, "while the batch itself computed in less"
    finally:
        engine.stop()
