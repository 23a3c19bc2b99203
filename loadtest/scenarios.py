"""The named load-test scenarios, in one place.

A scenario says what load to send (tasks, popularity, loop, concurrency or offered rate), which
server settings it needs when the load test starts the server itself, and what else happens
during the run (hot swaps). ``spartan loadtest run --scenario NAME`` runs one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from loadtest.errors import LoadTestError


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    tasks: int = 1
    zipf_s: float = 0.0  # task popularity: P(k) ~ 1/(k+1)^s
    mode: Literal["closed", "open"] = "closed"
    concurrency: int = 64
    texts_per_request: int = 1
    overload_factor: float | None = None  # open loop: offered rate = factor x capacity measured first
    cache_fraction: float | None = None  # cache budget as a share of all the scenario's memory bytes
    hot_swap_every_s: float | None = None  # PUT a new version of the most popular task this often
    distinct_memories: int | None = None  # tasks share this many memory files (None: one per task)
    server: dict[str, str] = field(default_factory=dict)  # SPARTAN_* settings (without prefix)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "steady",
            "one task, closed loop with enough clients to keep batches of 32 full",
            tasks=1,
            concurrency=64,
        ),
        Scenario(
            "many-tenants",
            "200 tasks of Zipf popularity (s=1.1), cache budget a quarter of the working set",
            tasks=200,
            zipf_s=1.1,
            concurrency=64,
            cache_fraction=0.25,
        ),
        Scenario(
            "hot-swap",
            "4 tasks under closed-loop load; a new version of the busiest task is uploaded every 5 s",
            tasks=4,
            zipf_s=1.0,
            concurrency=64,
            hot_swap_every_s=5.0,
        ),
        Scenario(
            "memory-pressure",
            "600 tasks (--tasks to change), equally popular, the cache sized by the server from its "
            "memory limit: more memories than fit cycle through it; RSS is sampled",
            tasks=600,
            concurrency=8,
            distinct_memories=4,
        ),
        # 8 texts per request: one load-generator process can then offer 2x the capacity in
        # instances (with single texts it managed ~58 requests/s here, a third of 2x).
        Scenario(
            "overload",
            "open loop at 2x the capacity measured just before, 8 texts per request: excess shed "
            "with 429, admitted latency bounded by a short queue",
            tasks=4,
            zipf_s=1.0,
            mode="open",
            concurrency=16,
            texts_per_request=8,
            overload_factor=2.0,
            server={"queue_size": "128"},
        ),
    )
}


def get_scenario(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise LoadTestError(f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}")
    return SCENARIOS[name]
