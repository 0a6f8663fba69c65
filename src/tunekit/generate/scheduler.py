"""Requests from many threads decoded in one batch: a background thread runs the batch runner while callers
`submit` prompts and wait on a future or read a stream.

    scheduler = BatchScheduler(generator)
    job = scheduler.submit(messages, GenerationParams(max_new_tokens=128), stream=True)
    for delta in job: ...           # text deltas (only with stream=True)
    generation = job.result()       # blocks until done
    scheduler.close()

A request that arrives while others decode joins the running batch at the next step (continuous
batching), so a server under 16 concurrent clients decodes them together instead of one at a time.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import torch

from tunekit.devices import serving_threads
from tunekit.generate.batching import BatchRunner, Request
from tunekit.generate.generator import Generator
from tunekit.generate.hf_fallback import hf_generate
from tunekit.generate.types import Generation, GenerationParams

_END = object()


class Submission:
    """One submitted request: `result()` waits for its Generation; iterating yields text deltas
    (submitted with stream=True), which joined equal the Generation's text."""

    def __init__(self, request: Request, stream: bool):
        self.request = request
        self.future: Future[Generation] = Future()
        self._deltas: queue.SimpleQueue[Any] | None = queue.SimpleQueue() if stream else None
        self._sent = 0

    def result(self, timeout: float | None = None) -> Generation:
        """The Generation; raises concurrent.futures.CancelledError after `cancel()`."""
        return self.future.result(timeout)

    def cancel(self) -> None:
        """Stop generating (e.g. the client went away or timed out): the row leaves the batch at the next
        step, and `result()` and the stream raise CancelledError. No-op once finished."""
        if self.future.cancel():
            self.request.cancelled = True
            if self._deltas is not None:
                self._deltas.put(CancelledError())

    def __iter__(self) -> Iterator[str]:
        if self._deltas is None:
            raise TypeError("submit(..., stream=True) to read text deltas")
        while (item := self._deltas.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item

    def publish(self) -> None:
        """Called on the scheduler thread after each step: pass on new safe text, and the end."""
        if self.future.cancelled():
            return
        if self.request.error is not None:
            self.fail(self.request.error)
            return
        if self._deltas is not None:
            text = self.request.result.text if self.request.done else self.request.tracker.safe_text()
            if len(text) > self._sent:
                self._deltas.put(text[self._sent :])
                self._sent = len(text)
        if self.request.done:
            if self._deltas is not None:
                self._deltas.put(_END)
            with contextlib.suppress(InvalidStateError):  # cancelled by its caller a moment ago
                self.future.set_result(self.request.result)  # type: ignore[arg-type]

    def fail(self, error: BaseException) -> None:
        if self._deltas is not None:
            self._deltas.put(error)
        with contextlib.suppress(InvalidStateError):
            self.future.set_exception(error)


class BatchScheduler:
    """Decodes everything submitted to it on one background thread, through `generator`'s batch runner.

    Shares the generator's lock, taken for each step, so direct `generate` calls still work meanwhile."""

    def __init__(self, generator: Generator):
        self.generator = generator
        self._runner: BatchRunner = generator.runner()
        self._incoming: list[Submission] = []
        self._live: list[Submission] = []
        self._retiring: dict[str, Future[None]] = {}  # adapters to delete once no request uses them
        self._wake = threading.Condition()
        self._closed = False
        self._threads = torch.get_num_threads()  # what the process was configured with (devices.tune_cpu)
        self._thread = threading.Thread(target=self._loop, name="tunekit-batch-scheduler", daemon=True)
        self._thread.start()

    def submit(self, prompt: list[dict] | str, params: GenerationParams = GenerationParams(),
               adapter: str | None = None, *, stream: bool = False) -> Submission:
        """Queue a prompt; raises UserError at once for bad params, an unknown adapter or a too-long prompt."""
        request = self.generator.request(prompt, params, self.generator.resolve_adapter(adapter))
        submission = Submission(request, stream)
        with self._wake:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            # Again under the lock that retirement holds: the adapter may have been deleted since the check above.
            self.generator.resolve_adapter(request.adapter)
            self._incoming.append(submission)
            self._wake.notify()
        return submission

    def retire_adapter(self, name: str, timeout: float) -> None:
        """Delete adapter `name` from the model once no request for it is queued or decoding: requests already
        submitted for it finish first. A TimeoutError, with the adapter kept, if some still run after `timeout` s.

        The scheduler's thread checks and deletes, holding the lock `submit` takes, so no request for the
        adapter can be queued in between and then meet a model without it (which would fail its whole batch)."""
        retired: Future[None] = Future()
        with self._wake:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._retiring[name] = retired
            self._wake.notify()
        try:
            retired.result(timeout)
        except FutureTimeout:
            with self._wake:
                if self._retiring.get(name) is retired:
                    del self._retiring[name]
            if not retired.done():
                raise
            retired.result()  # deleted (or failed) just as the wait ended

    def close(self) -> None:
        """Finish what was submitted, then stop the thread."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    def __enter__(self) -> BatchScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._incoming or self._runner.busy or self._closed or self._retiring):
                    self._wake.wait()
                self._retire_unused()
                if self._closed and not (self._incoming or self._runner.busy):
                    for retired in self._retiring.values():
                        retired.set_exception(RuntimeError("the scheduler is closed"))
                    return
                arrived, self._incoming = self._incoming, []
            try:
                self._take(arrived)
                if self._runner.busy:
                    with self.generator.stepping(), self._step_threads():
                        self._runner.step()
            except Exception as error:  # a failed step fails its requests, not the server's thread
                for submission in self._live:
                    submission.fail(error)
                self._live, self._runner = [], self.generator.runner()
                continue
            for submission in self._live:
                submission.publish()
            self._live = [s for s in self._live if not (s.request.done or s.request.cancelled)]

    @contextlib.contextmanager
    def _step_threads(self) -> Iterator[None]:
        """The step's intra-op threads (devices.serving_threads), then the process's own again: the count is
        process-wide, and direct `generate` calls between steps must not inherit a small batch's one thread."""
        wanted = serving_threads(self._step_tokens(), self._threads)
        if self.generator.device.device.type != "cpu" or wanted == self._threads:
            yield
            return
        torch.set_num_threads(wanted)
        try:
            yield
        finally:
            torch.set_num_threads(self._threads)

    def _step_tokens(self) -> int:
        """Tokens the next step computes, about: one per running row, and the prompts it may admit."""
        running = len(self._runner.batch) if self._runner.batch is not None else 0
        return running + sum(len(r.prompt_ids) for r in self._runner.pending)

    def _retire_unused(self) -> None:
        """Delete each adapter asked to retire that no queued or running request uses (called holding _wake)."""
        if not self._retiring:
            return
        used = {s.request.adapter for s in self._incoming} | {r.adapter for r in self._runner.requests}
        for name, retired in list(self._retiring.items()):
            if name in used:
                continue
            del self._retiring[name]
            try:
                self.generator.unload_adapter(name)
            except Exception as error:
                retired.set_exception(error)
            else:
                retired.set_result(None)

    def _take(self, arrived: list[Submission]) -> None:
        """Queue new requests in the batch runner; the ones it cannot batch run to the end right away."""
        for submission in arrived:
            adapter = submission.request.adapter
            if self.generator.uses_fallback(adapter):
                if submission.request.cancelled:  # gave up while queued behind other one-at-a-time requests
                    continue
                try:
                    with self.generator.decoding(adapter):
                        hf_generate(self.generator.model, self.generator.tokenizer, submission.request,
                                    self.generator.eos_ids, self.generator.pad_id, self.generator.constraints)
                except Exception as error:
                    submission.fail(error)
                else:
                    submission.publish()
            else:
                self._runner.add([submission.request])
                self._live.append(submission)
