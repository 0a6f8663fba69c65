"""Answers in OpenAI's shapes: a whole ChatCompletion/Completion (n choices), or server-sent event chunks.

Streaming runs the pipeline in a request thread that hands each piece to the event loop through a queue;
with n choices each chunk names its choice's index. When the client goes away or the deadline passes, the
submissions are cancelled: their rows leave the batch at the next decoding step, so nobody's slot is spent
on an answer no one reads. Token logprobs come with the finished generation (tunekit.generate's contract),
so a stream sends a choice's logprobs in its last chunk, the one with its finish_reason: clients that join
the chunks' logprobs get every token's.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

from tunekit.serve.admission import release_when_done, seconds_left, take_slot
from tunekit.serve.errors import ApiError, timed_out
from tunekit.serve.jobs import Job
from tunekit.serve.logprobs import chat_logprobs, completion_logprobs
from tunekit.serve.pipeline import Answer, Prepared, merged
from tunekit.serve.replies import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    Citation,
    Completion,
    CompletionChoice,
    TunekitInfo,
    Usage,
    new_id,
)

DONE = "data: [DONE]\n\n"


class StreamCancelled(Exception):
    """Raised inside the generating thread to stop it: the client left or the deadline passed."""


def usage(answer: Answer) -> Usage:
    return Usage(prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
                 total_tokens=answer.prompt_tokens + answer.completion_tokens)


def info(job: Job, answer: Answer, latency_ms: float | None = None) -> TunekitInfo:
    return TunekitInfo(adapter=job.adapter, guard_events=answer.events, guard_retries=answer.retries,
                       grounded=answer.grounded, citation_check=answer.citation_check, sources=answer.sources,
                       constraint=answer.constraint, latency_ms=None if latency_ms is None else round(latency_ms, 2))


def respond(job: Job, answers: list[Answer], *, latency_ms: float) -> ChatCompletion | Completion:
    """The whole response: one choice per answer; usage counts the prompt once and every choice's tokens."""
    whole = merged(answers)
    if job.messages is None:
        return Completion(model=job.model, usage=usage(whole), x_tunekit=info(job, whole, latency_ms), choices=[
            CompletionChoice(index=i, text=a.text, finish_reason=a.finish_reason,
                             logprobs=completion_logprobs(a.logprobs)) for i, a in enumerate(answers)])
    return ChatCompletion(
        model=job.model, usage=usage(whole), x_tunekit=info(job, whole, latency_ms),
        citations=[Citation(**c) for c in whole.citations],
        choices=[ChatChoice(index=i, message=AssistantMessage(content=a.text), finish_reason=a.finish_reason,
                            logprobs=chat_logprobs(a.logprobs)) for i, a in enumerate(answers)],
    )


async def stream_response(state: Any, request: Any, job: Job, started: float) -> Any:
    """Admit and prepare first, so refusals are still plain HTTP errors; then stream the answer."""
    from starlette.responses import StreamingResponse

    slot = await take_slot(state.gate, job.deadline)  # admission wait counts toward the timeout
    prepare = asyncio.get_running_loop().run_in_executor(state.workers, state.pipeline.prepare, job)
    try:
        prepared = await asyncio.wait_for(asyncio.shield(prepare), timeout=seconds_left(job.deadline))
    except BaseException:
        release_when_done(prepare, slot)  # not before the thread is done preparing
        raise
    request.state.logged = True
    events = _events(state, request, prepared, started, slot)
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _events(state: Any, request: Any, prepared: Prepared, started: float,
                  stack: AsyncExitStack) -> AsyncIterator[str]:
    job = prepared.job
    chunks = _Chunks(job)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()

    def emit(choice: int, piece: str) -> None:
        if stop.is_set():
            raise StreamCancelled
        loop.call_soon_threadsafe(queue.put_nowait, ("piece", (choice, piece)))

    submissions: list[Any] = []

    def work() -> None:
        try:
            result = ("done", state.pipeline.stream(prepared, emit, submissions.append))
        except BaseException as exc:  # handed to the event loop, which reports it to the client
            result = ("error", exc)
        loop.call_soon_threadsafe(queue.put_nowait, result)

    worker = loop.run_in_executor(state.workers, work)
    key_id = getattr(request.state, "key_id", None)
    ended = False
    try:
        for chunk in chunks.first():
            yield chunk
        while True:
            try:
                kind, value = await asyncio.wait_for(queue.get(), timeout=seconds_left(job.deadline))
            except asyncio.TimeoutError:
                kind, value = "error", timed_out(state.serve.timeout_s)
            if kind == "piece":
                if value[1]:
                    yield chunks.piece(*value)
                continue
            ended = True
            if kind == "done":
                state.log_answer(key_id, job, merged(value), (time.perf_counter() - started) * 1000)
                for chunk in chunks.last(value):
                    yield chunk
            else:
                error = value if isinstance(value, ApiError) else ApiError(500, "Generation failed.")
                if not isinstance(value, ApiError | StreamCancelled):
                    state.report_unexpected(value)
                # The response already started as a 200: the error goes in the stream, as OpenAI sends it.
                _log_stream_error(state, job, key_id, error, started)
                yield f"data: {json.dumps(error.body())}\n\n"
            break
        yield DONE
    finally:
        if not ended:  # the client went away mid-stream (nginx's 499: client closed request)
            _log_stream_error(state, job, key_id, ApiError(499, "The client closed the connection."), started)
        stop.set()
        worker.cancel()  # only stops it if it has not started
        for submission in submissions:
            submission.cancel()  # no-op when it finished; else its row leaves the batch
        release_when_done(worker, stack)  # the slot is free once the thread is (at once if it never started)


def _log_stream_error(state: Any, job: Job, key_id: str | None, error: ApiError, started: float) -> None:
    state.metrics.errors.labels(job.endpoint, error.code or error.type).inc()
    state.log_failure(endpoint=job.endpoint, model=job.model, key_id=key_id, status=error.status, error=error.message,
                      latency_ms=(time.perf_counter() - started) * 1000, messages=job.logged_messages())


class _Chunks:
    """The SSE lines of one streamed answer (n choices, each chunk naming its own), in OpenAI's chunk format."""

    def __init__(self, job: Job):
        self.job = job
        self.chat = job.messages is not None
        self.id = new_id("chatcmpl" if self.chat else "cmpl")
        self.created = int(time.time())

    def _line(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.job.model, "choices": choices, **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def _choice(self, index: int, text: str | None, finish_reason: str | None, role: bool = False,
                logprobs: Any = None) -> dict[str, Any]:
        shown = logprobs.model_dump() if logprobs is not None else None
        if not self.chat:
            return {"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": shown}
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        return {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": shown}

    def first(self) -> list[str]:
        return [self._line([self._choice(i, "", None, role=True)]) for i in range(self.job.n)]

    def piece(self, index: int, text: str) -> str:
        return self._line([self._choice(index, text, None)])

    def last(self, answers: list[Answer]) -> list[str]:
        """Each choice's finish_reason (and logprobs: the engine reports them with the finished answer); the
        last of these carries tunekit's extras, then the usage chunk when asked for."""
        whole = merged(answers)
        extra: dict[str, Any] = {"x_tunekit": info(self.job, whole).model_dump()}
        if self.chat:
            extra["citations"] = whole.citations
        shape = chat_logprobs if self.chat else completion_logprobs
        lines = [self._line([self._choice(i, None if self.chat else "", a.finish_reason, logprobs=shape(a.logprobs))],
                            **(extra if i == len(answers) - 1 else {}))
                 for i, a in enumerate(answers)]
        if self.job.include_usage:
            lines.append(self._line([], usage=usage(whole).model_dump()))
        return lines
