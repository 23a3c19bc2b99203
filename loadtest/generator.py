"""The load generator: closed loop (N clients) or open loop (Poisson arrivals), bounded in time and count.

Each request is one ``POST /v1/<task>/classify`` through :class:`~service.client.AsyncSpartanClient`,
its task drawn from a :class:`~loadtest.workload.Zipf` popularity and its texts from real data.
Every request becomes a :class:`Sample` (start, latency, status, inputs, served version); errors
are samples too (status 0 = no HTTP answer). Open-loop arrivals that find ``max_in_flight``
requests outstanding are counted as dropped by the generator (status -1), so an overloaded
server cannot make the generator's own memory grow without bound.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import httpx

from loadtest.errors import LoadTestError
from loadtest.workload import Zipf
from service.client import AsyncSpartanClient, ServiceHTTPError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
NO_ANSWER, DROPPED = 0, -1


@dataclass(frozen=True)
class LoadOptions:
    mode: Literal["closed", "open"] = "closed"
    concurrency: int = 32  # closed loop: clients, each sending its next request when answered
    rate: float = 10.0  # open loop: mean requests per second (Poisson arrivals)
    max_in_flight: int = 1024  # open loop: arrivals beyond this are dropped by the generator
    duration_s: float = 30.0
    max_requests: int | None = None
    texts_per_request: int = 1
    timeout_s: float = 120.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.rate <= 0 or self.max_in_flight < 1 or self.texts_per_request < 1:
            raise LoadTestError("concurrency, rate, max in flight and texts per request must be positive")
        if not 0 < self.duration_s <= 24 * 3600:
            raise LoadTestError(f"duration must be between 0 and 24 h, got {self.duration_s} s")
        if self.max_requests is not None and self.max_requests < 1:
            raise LoadTestError(f"max requests must be positive, got {self.max_requests}")


@dataclass(frozen=True)
class Sample:
    start: float  # seconds since the load started
    latency: float  # seconds until the answer (or the error)
    status: int  # HTTP status; 0 = no answer (connection error, client timeout); -1 = dropped
    inputs: int
    task: int
    version: int | None = None
    retry_after: float | None = None  # seconds, from a refusal's Retry-After header


def check_loopback(url: str) -> None:
    """Load tests stay on this machine: refuse any other host."""
    host = urlsplit(url).hostname
    if host not in LOOPBACK:
        raise LoadTestError(f"load tests only target loopback (127.0.0.1), not {host!r}")


class LoadGenerator:
    """Sends the load; ``samples`` fills as answers arrive; ``on_progress`` is called every second."""

    def __init__(
        self,
        url: str,
        task_names: list[str],
        texts: list[str],
        popularity: Zipf,
        options: LoadOptions,
        api_key: str | None = None,
    ) -> None:
        check_loopback(url)
        if not task_names or not texts:
            raise LoadTestError("the load needs at least one task and one text")
        self.url, self.task_names, self.texts = url, task_names, texts
        self.popularity, self.options, self.api_key = popularity, options, api_key
        self.samples: list[Sample] = []
        self._rng = random.Random(options.seed)
        self._sent = 0
        self._stopped = False
        self.started_at = 0.0  # time.monotonic() when run() began; samples' start is relative to it
        self.sending_seconds = 0.0  # how long requests were being sent (the run minus the drain)

    def _next_request(self) -> tuple[int, list[str]] | None:
        """(task index, texts) of the next request, or None when the count or time bound is reached."""
        elapsed = time.monotonic() - self.started_at
        if (
            self._stopped
            or (self.options.max_requests is not None and self._sent >= self.options.max_requests)
            or elapsed >= self.options.duration_s
        ):
            if not self.sending_seconds:
                self.sending_seconds = elapsed
            return None
        self._sent += 1
        per = self.options.texts_per_request
        return self.popularity.draw(), [self._rng.choice(self.texts) for _ in range(per)]

    async def _one(self, client: AsyncSpartanClient, task: int, texts: list[str]) -> None:
        start = time.monotonic()
        status, version, retry_after = 200, None, None
        try:
            version = (await client.classify(self.task_names[task], texts)).version
        except ServiceHTTPError as exc:
            status, retry_after = exc.status, exc.retry_after
        except httpx.HTTPError:
            status = NO_ANSWER
        now = time.monotonic()
        self.samples.append(
            Sample(start - self.started_at, now - start, status, len(texts), task, version, retry_after)
        )

    def stop(self) -> None:
        """Send no further request (those in flight are still answered): ends :meth:`run` early."""
        self._stopped = True

    async def run(self, on_progress: Callable[[float], None] | None = None) -> float:
        """Send the load until a bound is reached and every answer is in; returns the seconds taken."""
        client = AsyncSpartanClient(self.url, self.api_key, self.options.timeout_s, max_connections=None)
        self.started_at = time.monotonic()
        reporter = asyncio.create_task(self._report(on_progress)) if on_progress else None
        try:
            async with client:
                if self.options.mode == "closed":
                    await asyncio.gather(
                        *(self._client_loop(client) for _ in range(self.options.concurrency))
                    )
                else:
                    await self._open_loop(client)
        finally:
            if reporter is not None:
                reporter.cancel()
        return time.monotonic() - self.started_at

    async def _client_loop(self, client: AsyncSpartanClient) -> None:
        while (request := self._next_request()) is not None:
            await self._one(client, *request)

    async def _open_loop(self, client: AsyncSpartanClient) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        next_at = time.monotonic()
        while (request := self._next_request()) is not None:
            if len(in_flight) >= self.options.max_in_flight:
                self.samples.append(Sample(time.monotonic() - self.started_at, 0.0, DROPPED, 0, request[0]))
            else:
                task = asyncio.create_task(self._one(client, *request))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            next_at += self._rng.expovariate(self.options.rate)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*in_flight)

    async def _report(self, on_progress: Callable[[float], None]) -> None:
        while True:
            await asyncio.sleep(1.0)
            on_progress(time.monotonic() - self.started_at)
