"""The engine's admission queue: one FIFO per tenant, served by deficit round robin.

A tenant that floods the service fills its own queue, not everyone's: each tenant may hold at
most ``tenant_capacity`` waiting rows, and all tenants together at most ``capacity``; a
request's rows are admitted all or none. The engine thread takes rows tenant by tenant: on its
turn a tenant gains ``quantum x weight`` credit and gives one row per credit, then the next
waiting tenant has its turn (Shreedhar and Varghese's deficit round robin, with a row as the unit
of work). A light tenant's row is therefore taken within one round, whatever the heavy tenant
has queued, and under contention tenants get engine rows in proportion to their weights.

Thread-safe: requests are put from the event loop, rows taken by the engine thread.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from service.errors import OverloadedError

T = TypeVar("T")

QUIET_ROWS_PER_S = 1e-3
"""A tenant whose arrival rate decayed below this is forgotten (the rates stay bounded by the
tenants that sent lately)."""


class FairQueue(Generic[T]):
    def __init__(
        self,
        capacity: int,
        tenant_capacity: int,
        weight: Callable[[str], float] = lambda tenant: 1.0,
        quantum: float = 1.0,
        rate_window_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert capacity >= 1, f"capacity must be positive, got {capacity}"
        assert tenant_capacity >= 1, f"tenant_capacity must be positive, got {tenant_capacity}"
        self.capacity = capacity
        self.tenant_capacity = min(tenant_capacity, capacity)
        self._weight = weight
        self._quantum = quantum
        self._queues: OrderedDict[str, deque[T]] = OrderedDict()  # tenants with waiting rows, in turn order
        self._taken: Counter[str] = Counter()  # rows taken and not yet done, per tenant (the engine's round)
        self._credit: dict[str, float] = {}
        self._size = 0
        self._ready = threading.Condition()
        self._rate_window_s = rate_window_s  # time constant of the tenants' arrival rates
        self._clock = clock
        self._arrivals: dict[str, tuple[float, float]] = {}  # tenant -> (rows/s, as of this time)

    def qsize(self) -> int:
        return self._size

    def tenants(self) -> int:
        """How many tenants have rows waiting."""
        return len(self._queues)

    def others_waiting(self, tenants: set[str]) -> bool:
        """Whether a tenant outside ``tenants`` has rows waiting."""
        with self._ready:
            return any(tenant not in tenants for tenant in self._queues)

    def waiting(self, tenant: str) -> int:
        queue = self._queues.get(tenant)
        return len(queue) if queue is not None else 0

    def held(self, tenant: str) -> int:
        """The tenant's rows not done yet: waiting, and taken into the engine's round."""
        return self.waiting(tenant) + self._taken[tenant]

    def done(self, tenants: Sequence[str]) -> None:
        """Taken rows of these tenants (one entry per row) were answered."""
        with self._ready:
            self._taken.subtract(tenants)
            self._taken = +self._taken  # drop tenants with none left

    def rows_before(self, tenant: str, count: int, row_seconds: float) -> int:
        """How many rows run before the last of ``count`` new rows of ``tenant`` (its own
        included), when a row takes ``row_seconds``. A row counts from its arrival until it is
        done: the ones taken into the engine's round run first too. While the tenant's rows
        drain, every other tenant takes its weighted share of the turns, or less: what it holds
        plus what it sends meanwhile at its recent arrival rate. A tenant with nothing waiting
        right now still counts: light tenants are served as they arrive (docs/reliability.md,
        section 5: without them, and without the rows in the round, the heavy tenants' requests
        waited 2.3x, then 1.65x, longer than expected)."""
        with self._ready:
            now = self._clock()
            own = self.held(tenant) + count
            turns = own / self._weight(tenant)  # the tenant's turns; each other one gets turns x weight
            others = [
                (math.ceil(turns * self._weight(other)), self.held(other), self._arrival_rate(other, now))
                for other in self._queues.keys() | self._arrivals.keys() | self._taken.keys()
                if other != tenant
            ]
            active = [other for other in others if other[1] or other[2] >= QUIET_ROWS_PER_S]
            return math.ceil(rows_meanwhile(own, active, row_seconds) - 1e-9)

    def _arrival_rate(self, tenant: str, now: float) -> float:
        """Rows per second the tenant had admitted lately (decaying with ``rate_window_s``)."""
        rate, at = self._arrivals.get(tenant, (0.0, now))
        return rate * math.exp(-(now - at) / self._rate_window_s)

    def _note_arrival(self, tenant: str, rows: int) -> None:
        now = self._clock()
        self._arrivals[tenant] = (self._arrival_rate(tenant, now) + rows / self._rate_window_s, now)
        for other, (rate, at) in list(self._arrivals.items()):  # forget tenants that went quiet
            if rate * math.exp(-(now - at) / self._rate_window_s) < QUIET_ROWS_PER_S:
                del self._arrivals[other]

    def put_all(self, tenant: str, items: Sequence[T]) -> None:
        """Admit every item or none (OverloadedError saying which limit was reached)."""
        with self._ready:
            held = self.waiting(tenant)
            if self.tenant_capacity < self.capacity and held + len(items) > self.tenant_capacity:
                raise OverloadedError(
                    f"tenant {tenant!r} has {held} texts waiting, its share of the queue "
                    f"({self.tenant_capacity}, tenant_queue_rows); retry later"
                )
            if self._size + len(items) > self.capacity:
                raise OverloadedError(f"the queue is full ({self.capacity} texts); retry later")
            self._queue_of(tenant).extend(items)
            self._size += len(items)
            self._note_arrival(tenant, len(items))
            self._ready.notify()

    def put_back(self, tenant_items: Sequence[tuple[str, T]]) -> None:
        """Return taken items to the front of their tenants' queues, in the given order (they were
        admitted once, so no limit applies)."""
        with self._ready:
            for tenant, item in reversed(tenant_items):
                self._queue_of(tenant).appendleft(item)
                self._size += 1
                self._taken[tenant] -= 1
            self._taken = +self._taken
            self._ready.notify()

    def _queue_of(self, tenant: str) -> deque[T]:
        """The tenant's queue; a tenant with nothing waiting joins at the end of the turn order."""
        queue = self._queues.get(tenant)
        if queue is None:
            queue = self._queues[tenant] = deque()
            self._credit[tenant] = 0.0
        return queue

    def get(self, timeout: float) -> T | None:
        """The next row in round-robin order, waiting up to ``timeout`` seconds; None if none came."""
        deadline = time.monotonic() + timeout
        with self._ready:
            while not self._size:
                left = deadline - time.monotonic()
                if left <= 0 or not self._ready.wait(left):
                    return None
            return self._take()

    def get_nowait(self) -> T | None:
        with self._ready:
            return self._take() if self._size else None

    def _take(self) -> T:
        while True:
            tenant, queue = next(iter(self._queues.items()))
            if self._credit[tenant] < 1:
                self._credit[tenant] += self._quantum * self._weight(tenant)  # its turn begins
                if self._credit[tenant] < 1:  # a small weight: credit builds over several rounds
                    self._queues.move_to_end(tenant)
                    continue
            item = queue.popleft()
            self._size -= 1
            self._taken[tenant] += 1
            self._credit[tenant] -= 1
            if not queue:  # an idle tenant keeps no credit
                del self._queues[tenant], self._credit[tenant]
            elif self._credit[tenant] < 1:
                self._queues.move_to_end(tenant)
            return item


def rows_meanwhile(own: int, others: Sequence[tuple[int, int, float]], row_seconds: float) -> float:
    """The rows x that run before the last of ``own`` rows when each other tenant (share, waiting,
    rows/s) takes min(share, waiting + rate x row_seconds x x) of them: the solution of

        x = own + sum_j min(s_j, q_j + r_j t x),   t = row_seconds

    The right side is concave in x and grows more slowly than x once every tenant is at its share,
    so there is one solution. Tenant j reaches its share at x_j = (s_j - q_j) / (r_j t); between
    these breakpoints the right side is a line a + b x, so walking them in order finds the piece
    where x = a / (1 - b) falls inside."""
    capped_at = sorted(
        (0.0 if waiting >= share else (share - waiting) / (rate * row_seconds) if rate > 0 else math.inf, n)
        for n, (share, waiting, rate) in enumerate(others)
    )
    a = own + sum(min(share, waiting) for share, waiting, _ in others)  # the line at x = 0
    b = sum(rate * row_seconds for share, waiting, rate in others if waiting < share)
    low = 0.0
    for high, n in capped_at:
        if b < 1.0 and low <= (x := a / (1.0 - b)) <= high:
            return x
        share, waiting, rate = others[n]
        if waiting < share:  # from here on this tenant takes its share and no more
            a += share - waiting
            b -= rate * row_seconds
        low = high
    return a / (1.0 - max(b, 0.0))
