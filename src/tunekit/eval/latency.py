"""Per-request latency, measured the way a user meets it.

The quality pass decodes the whole test set as one batch: fastest, and the right measure of
throughput and cost. But a row's time inside that batch is roughly the time of the whole run, not
what a user waits for an answer, so a latency gate on it would judge the test-set size. Latency is
therefore measured apart: a fixed sample of the test prompts goes through `BatchScheduler` (the
server's own path), `concurrency` requests in flight at a time, closed loop (each simulated client
sends its next request when its answer arrives). Each request's time runs from submit, queueing
included, to its last token.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the engine imports torch; sample_rows is also used before any model loads
    from tunekit.generate import Generation, GenerationParams, Generator


@dataclass
class LatencyProbe:
    indices: list[int]  # test rows that were sent, in sending order
    generations: list[Generation]  # one per index
    concurrency: int

    @property
    def latencies_s(self) -> list[float]:
        return [g.latency_s for g in self.generations]

    def by_row(self) -> dict[int, float]:
        return {i: g.latency_s for i, g in zip(self.indices, self.generations)}


def sample_rows(total: int, samples: int, seed: int) -> list[int]:
    """`samples` distinct rows of `total`, the same for every candidate and every run with this seed."""
    rows = list(range(total))
    if samples >= total:
        return rows
    return sorted(random.Random(seed).sample(rows, samples))


def measure_latency(generator: Generator, prompts: list[Any], params: GenerationParams, *, samples: int,
                    concurrency: int, seed: int) -> LatencyProbe:
    """Send a sample of `prompts` through a BatchScheduler, `concurrency` at a time; time each request."""
    from tunekit.generate import BatchScheduler

    indices = sample_rows(len(prompts), samples, seed)
    with BatchScheduler(generator) as scheduler:

        def ask(index: int) -> Generation:
            return scheduler.submit(prompts[index], params).result()

        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="tunekit-latency") as clients:
            generations = list(clients.map(ask, indices))
    return LatencyProbe(indices, generations, concurrency)
