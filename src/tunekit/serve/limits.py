"""Per-key rate limits (on the `limits` library) and bounded concurrency with a queue.

Three budgets a minute, kept in one in-process store (one server process; limits' Redis storage would share
them between replicas):
- requests per key (per client address when the server has no keys): a moving window, so no burst at a
  window edge;
- tokens per key: a fixed window from the key's first request, one counter a key rather than one entry a
  token (a moving window would hold up to tokens_per_minute entries per client), and an exact Retry-After;
- failed authentications per client address: past it, the client is refused before its key is checked, so
  keys cannot be guessed quickly.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, RateLimiter

from tunekit.config_stages import ServeConfig
from tunekit.serve.errors import ApiError

if TYPE_CHECKING:
    from tunekit.serve.jobs import Job

CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English text, which its own token limits estimate with too


class RateLimits:
    def __init__(self, requests_per_minute: int, tokens_per_minute: int, auth_failures_per_minute: int):
        storage = MemoryStorage()
        self._moving = MovingWindowRateLimiter(storage)
        self._fixed = FixedWindowRateLimiter(storage)
        self.requests = RateLimitItemPerMinute(requests_per_minute, namespace="requests")
        self.tokens = RateLimitItemPerMinute(tokens_per_minute, namespace="tokens")
        self.auth_failures = RateLimitItemPerMinute(auth_failures_per_minute, namespace="auth-failures")

    @classmethod
    def from_config(cls, serve: ServeConfig) -> RateLimits:
        return cls(serve.rate_limit_per_minute, serve.tokens_per_minute, serve.auth_failures_per_minute)

    def hit(self, key: str) -> None:
        """Count one request for `key`; a 429 when its last minute already holds the most allowed."""
        if not self._moving.hit(self.requests, key):
            raise self._refusal(self._moving, self.requests, key,
                                f"Rate limit reached: {self.requests.amount} requests per minute")

    def charge_tokens(self, key: str, job: Job) -> None:
        """Charge `key` for `job` before it is generated; a 429 when that exceeds its tokens this minute.

        Charged: the completion tokens the job may generate (max_tokens, or the server's limit when the
        request set none, times its n choices) plus its input text estimated at CHARS_PER_TOKEN characters a
        token, since the tokenizer runs later, in a worker thread. Nothing is refunded when the answer is
        shorter, and the chat template and retrieved sources are not charged."""
        self.charge(key, job.max_tokens * job.n + estimated_input_tokens(job),
                    "max_tokens times n plus the prompt's estimate")

    def charge(self, key: str, cost: int, what: str) -> None:
        """Charge `key` `cost` tokens (`what` says how they were counted, in the 429's message). A charge larger
        than the whole budget is charged the whole budget: it waits for a fresh minute rather than being
        refused forever."""
        cost = min(self.tokens.amount, cost)
        if not self._fixed.test(self.tokens, key, cost=cost):  # test first: a refused charge must not count
            raise self._refusal(self._fixed, self.tokens, key, f"Rate limit reached: {self.tokens.amount} tokens "
                                f"per minute (this request is charged {cost}: {what})")
        self._fixed.hit(self.tokens, key, cost=cost)

    def refuse_if_locked_out(self, client: str) -> None:
        """A 429 for a client address with too many failed authentications in the last minute."""
        if not self._moving.test(self.auth_failures, client):
            raise self._refusal(self._moving, self.auth_failures, client, "Too many wrong or missing API keys "
                                f"from your address ({self.auth_failures.amount} a minute)")

    def failed_authentication(self, client: str) -> None:
        self._moving.hit(self.auth_failures, client)

    @staticmethod
    def _refusal(limiter: RateLimiter, item: RateLimitItem, key: str, reason: str) -> ApiError:
        reset = limiter.get_window_stats(item, key).reset_time
        retry = min(item.get_expiry(), max(1, math.ceil(reset - time.time())))
        return ApiError(429, f"{reason}. Try again in {retry} s.",
                        headers={"Retry-After": str(retry)})


def estimated_input_tokens(job: Job) -> int:
    turns = job.messages if job.messages is not None else [{"content": job.prompt or ""}]
    return math.ceil(sum(len(turn.get("content") or "") for turn in turns) / CHARS_PER_TOKEN)


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
