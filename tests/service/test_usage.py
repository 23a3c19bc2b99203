"""The usage meter: outcomes, the per-task series cap, unknown tasks."""

from __future__ import annotations

from service.tasks import TaskRef
from service.usage import OTHER_TASKS, UsageMeter


def test_outcomes_and_the_cap_on_task_series() -> None:
    meter = UsageMeter(max_task_series=2)
    meter.record(TaskRef("acme", "a"), "ok", 3, 30, 0.02)
    meter.record(TaskRef("acme", "b"), "rejected", 2, 0, 0.001)
    for i in range(50):  # a tenant cycling through random task ids
        meter.record(TaskRef("acme", f"random-{i}"), "ok", 1, 10, 0.01)
    meter.record(TaskRef("globex", "z"), "error", 1, 0, 0.01)
    meter.record(TaskRef("globex", "missing"), "error", 1, 0, 0.01, known=False)
    acme = meter.tenants["acme"]
    assert (acme.requests, acme.rows, acme.tokens, acme.rejected, acme.errors) == (52, 53, 530, 1, 0)
    assert acme.latency_histogram[:3] == [0, 50, 51], "cumulative: <=5 ms, <=10 ms, <=25 ms"
    assert acme.latency_histogram[-1] == 51, "answered requests only"
    assert set(meter.tasks) == {("acme", "a"), ("acme", "b"), ("acme", OTHER_TASKS), ("globex", OTHER_TASKS)}
    assert meter.tasks["acme", OTHER_TASKS].rows == 50
    assert meter.tenants["globex"].errors == 2
    assert meter.tasks["globex", OTHER_TASKS].errors == 1, "the unknown task has no series"
