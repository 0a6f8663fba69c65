"""Admission slots that outlive a timeout: a request that ran out of time keeps its slot until its work stops.

`asyncio.wait_for` gives up on a thread's result but cannot stop the thread: if the slot were freed then,
a client retrying slow requests would get one more worker thread busy per timeout, and the concurrency
limit would stop limiting. So the slot is released by the work's own completion, and the work stops
soon after the deadline (the pipeline checks it between steps, the batch drops a timed-out row).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any


def seconds_left(deadline: float) -> float:
    """Seconds until `deadline` (time.perf_counter()), never negative."""
    return max(0.0, deadline - time.perf_counter())


async def take_slot(gate: Any, deadline: float) -> AsyncExitStack:
    """A slot of `gate`, waited for until `deadline` (time.perf_counter()): waiting counts toward the timeout.
    Raises asyncio.TimeoutError when none frees in time; close the returned stack to release the slot."""
    stack = AsyncExitStack()
    await asyncio.wait_for(stack.enter_async_context(gate.admit()), timeout=seconds_left(deadline))
    return stack


async def run_in_slot(slot: AsyncExitStack, workers: Any, deadline: float, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` on a worker thread, awaited until `deadline`; the slot is released when the thread is done,
    whether or not anyone still waits for it (asyncio.TimeoutError once the deadline passes)."""
    work = asyncio.get_running_loop().run_in_executor(workers, fn, *args)
    release_when_done(work, slot)
    return await asyncio.wait_for(asyncio.shield(work), timeout=seconds_left(deadline))


_releasing: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks


def release_when_done(work: asyncio.Future, slot: AsyncExitStack) -> None:
    def release(done: asyncio.Future) -> None:
        if not done.cancelled():
            done.exception()  # retrieved here, so an abandoned failure is not reported as "never retrieved"
        task = asyncio.ensure_future(slot.aclose())
        _releasing.add(task)
        task.add_done_callback(_releasing.discard)

    work.add_done_callback(release)
