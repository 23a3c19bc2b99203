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
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from service.errors import OverloadedError

T = TypeVar("T")


class FairQueue(Generic[T]):
    def __init__(
        self,
        capacity: int,
        tenant_capacity: int,
        weight: Callable[[str], float] = lambda tenant: 1.0,
        quantum: float = 1.0,
    ) -> None:
        assert capacity >= 1, f"capacity must be positive, got {capacity}"
        assert tenant_capacity >= 1, f"tenant_capacity must be positive, got {tenant_capacity}"
        self.capacity = capacity
        self.tenant_capacity = min(tenant_capacity, capacity)
        self._weight = weight
        self._quantum = quantum
        self._queues: OrderedDict[str, deque[T]] = OrderedDict()  # tenants with waiting rows, in turn order
        self._credit: dict[str, float] = {}
        self._size = 0
        self._ready = threading.Condition()

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

    def rows_before(self, tenant: str, count: int) -> int:
        """How many rows run before the last of ``count`` new rows of ``tenant`` (its own
        included): each other tenant with rows waiting takes its weighted share of the turns
        meanwhile. Its share, not just the rows it has now: a tenant that is backlogged now keeps
        sending in an overload, and the first estimate, which counted only the rows waiting,
        admitted requests that then waited past their deadline (docs/reliability.md, section 2)."""
        with self._ready:
            own = self.waiting(tenant) + count
            share = own / self._weight(tenant)
            others = sum(
                math.ceil(share * self._weight(other))
                for other, queue in self._queues.items()
                if other != tenant and queue
            )
            return own + others

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
            self._ready.notify()

    def put_back(self, tenant_items: Sequence[tuple[str, T]]) -> None:
        """Return taken items to the front of their tenants' queues, in the given order (they were
        admitted once, so no limit applies)."""
        with self._ready:
            for tenant, item in reversed(tenant_items):
                self._queue_of(tenant).appendleft(item)
                self._size += 1
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
            self._credit[tenant] -= 1
            if not queue:  # an idle tenant keeps no credit
                del self._queues[tenant], self._credit[tenant]
            elif self._credit[tenant] < 1:
                self._queues.move_to_end(tenant)
            return item
