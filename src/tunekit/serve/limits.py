"""Per-key rate limits and bounded concurrency with a queue.

Hand-written (about 60 lines) rather than slowapi or limits: those bring a storage layer and decorators
for a job that, in one server process, is a deque of timestamps per key and an asyncio semaphore.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tunekit.serve.errors import ApiError

WINDOW_S = 60.0


class RateLimiter:
    """At most `per_minute` requests per key in any sliding 60-second window."""

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.per_minute = per_minute
        self.clock = clock
        self._seen: dict[str, deque[float]] = {}

    def hit(self, key: str) -> None:
        now = self.clock()
        times = self._seen.setdefault(key, deque())
        while times and times[0] <= now - WINDOW_S:
            times.popleft()
        if len(times) >= self.per_minute:
            retry = max(1, math.ceil(times[0] + WINDOW_S - now))
            raise ApiError(429, f"Rate limit reached: {self.per_minute} requests per minute. "
                                f"Try again in {retry} s.", headers={"Retry-After": str(retry)})
        times.append(now)
        if len(self._seen) > 10_000:  # many one-off clients: forget the idle ones rather than grow forever
            self._seen = {k: v for k, v in self._seen.items() if v and v[-1] > now - WINDOW_S}


class AdmissionGate:
    """`max_concurrency` requests run at once, `queue_size` more wait; beyond that a 503 at once.

    Refusing early keeps latency bounded under overload: a request that would wait behind a long queue
    gets an answer it can retry (OpenAI's SDKs retry 503s with backoff) instead of a timeout.
    """

    def __init__(self, max_concurrency: int, queue_size: int):
        self.max_concurrency = max_concurrency
        self.queue_size = queue_size
        self._slots = asyncio.Semaphore(max_concurrency)
        self.running = 0
        self.waiting = 0

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        if self.running >= self.max_concurrency and self.waiting >= self.queue_size:
            raise ApiError(503, "The server is overloaded: too many requests are waiting. Retry shortly.",
                           headers={"Retry-After": "1"})
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
