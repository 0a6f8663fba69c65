"""Continuous batching over a queue of requests: prefill newcomers in length-sorted chunks, decode every
running row one token per step, drop rows as they finish, refill the free slots.

`BatchRunner.step` is one scheduling round; `Generator.generate` loops it until its requests are done,
`Generator.stream` yields between rounds, and `BatchScheduler` runs it on a background thread.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from tunekit.generate.constraints import Constraints, apply_masks
from tunekit.generate.kv_batch import GROW_SLOTS, DecodeBatch, ModelShape, SharedPrefix
from tunekit.generate.multi_lora import StackedLora
from tunekit.generate.sampling import TextTracker, choose_tokens, request_rng, token_logprobs
from tunekit.generate.types import Generation, GenerationParams, TokenLogprob

# Padded tokens per prefill forward. Larger chunks cost padding and memory and buy little once the
# matmuls are this big; smaller ones pay the per-forward Python overhead more often.
PREFILL_TOKENS = 2048
# A prefill chunk may hold at most this much padding, relative to its real tokens.
PREFILL_PADDING = 1.25
# Prompts admitted together that begin with at least this many identical tokens run them once. Below it the
# extra forward costs about what it saves.
SHARED_PREFIX_MIN = 16


@dataclass(eq=False)
class Request:
    """One prompt on its way through the engine; `result` is set when it finishes."""

    prompt_ids: list[int]
    params: GenerationParams
    adapter: str | None
    decode: Callable[[list[int]], str]
    on_finish: Callable[[Request], None] | None = None
    matcher: Any = None  # the constraint's llguidance matcher (constraints.py), when params.constraint is set
    submitted: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    completion_tokens: int = 0
    result: Generation | None = None
    error: BaseException | None = None  # why this request alone failed (its batch went on without it)
    cancelled: bool = False  # set from any thread; the runner drops the row before its next step

    def __post_init__(self) -> None:
        self.tracker = TextTracker(self.decode, self.params.stop)
        self.rng: torch.Generator | None = None
        self.logprobs: list[TokenLogprob] = []

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    def fail(self, error: BaseException) -> bool:
        """End this request with `error`; True, like `accept` when a request finishes."""
        self.error = error
        if self.on_finish is not None:
            self.on_finish(self)
        return True

    def accept(self, token: int, eos_ids: frozenset[int]) -> bool:
        """Take the next generated token; True when the request is finished."""
        self.first_token_at = self.first_token_at or time.perf_counter()
        self.completion_tokens += 1
        if token in eos_ids:
            return self.finish("stop")
        if self.matcher is not None and not self.matcher.consume_token(token):
            return self.fail(RuntimeError(f"constrained decoding failed: {self.matcher.get_error()}"))
        if self.tracker.add(token):
            return self.finish("stop")
        if self.matcher is not None and self.matcher.is_stopped():  # the constraint allows nothing more
            return self.finish("stop")
        if self.completion_tokens >= self.params.max_new_tokens:
            return self.finish("length")
        return False

    def finish(self, reason: str) -> bool:
        now = time.perf_counter()
        self.result = Generation(
            text=self.tracker.final_text(), prompt_tokens=len(self.prompt_ids),
            completion_tokens=self.completion_tokens, finish_reason=reason,
            latency_s=now - self.submitted, ttft_s=(self.first_token_at or now) - self.submitted,
            logprobs=self.logprobs if self.params.logprobs is not None else None,
            constraint=self.params.constraint.describe() if self.params.constraint is not None else None,
        )
        if self.on_finish is not None:
            self.on_finish(self)
        return True


@dataclass
class Limits:
    max_batch_size: int
    max_batch_tokens: int  # prompt + max_new_tokens, summed over the running rows


class BatchRunner:
    """Owns the running batch. Not thread-safe: one thread drives it (callers hold the Generator's lock)."""

    def __init__(self, model: Any, shape: ModelShape, limits: Limits, eos_ids: frozenset[int], pad_id: int,
                 select_adapter: Callable[[str | None], None], *, mixes_adapters: bool = False,
                 stacked_lora: StackedLora | None = None, constraints: Constraints | None = None):
        self.model, self.shape, self.limits = model, shape, limits
        self.eos_ids, self.pad_id, self.select_adapter = eos_ids, pad_id, select_adapter
        self.mixes_adapters = mixes_adapters  # rows of different adapters may share a batch
        self.stacked_lora = stacked_lora  # their forward, when every LoRA layer allows it (else PEFT's)
        self.constraints = constraints  # what the rows' matchers were compiled with
        self.pending: list[Request] = []
        self.batch: DecodeBatch | None = None
        self.adapter: str | None = None

    @property
    def busy(self) -> bool:
        return bool(self.pending) or self.batch is not None

    @property
    def requests(self) -> list[Request]:
        """Every request waiting or running here."""
        return self.pending + (self.batch.rows if self.batch is not None else [])

    def add(self, requests: list[Request]) -> None:
        self.pending.extend(requests)

    @torch.inference_mode()
    def step(self) -> None:
        """Drop cancelled requests, admit what fits, then decode one token for every running row (unless no row
        was running: then the prefilled rows' first tokens are the step's, so streams show them at once)."""
        self._drop_cancelled()
        running = self.batch is not None
        self._admit()
        if self.batch is None or not running:  # fresh rows only: their first token goes out before any decode
            return
        with self._adapters(self.batch.rows) as forward:
            logits = self.batch.step(self.model, **forward)
        self._take_tokens(self.batch, logits)

    def _drop_cancelled(self) -> None:
        self.pending = [r for r in self.pending if not r.cancelled]
        if self.batch is not None and any(r.cancelled for r in self.batch.rows):
            alive = [i for i, r in enumerate(self.batch.rows) if not r.cancelled]
            if alive:
                self.batch.keep(alive)
            else:
                self.batch = None

    def _admit(self) -> None:
        admitted = self._admissible()
        if not admitted:
            return
        if self.batch is None:
            self.adapter = admitted[0].adapter
        for request in admitted:
            self.pending.remove(request)
            sampled = request.params.temperature > 0
            request.rng = request_rng(request.params.seed, self.shape.device) if sampled else None
        prefix = self._shared_prefix(admitted)
        shared = prefix.length if prefix is not None else 0
        fresh = [self._prefill(chunk, prefix) for chunk in prefill_chunks(admitted, shared)]
        running = [b for b in [self.batch, *fresh] if b is not None and len(b)]
        self.batch = DecodeBatch.merge(running, self._reserve(running)) if running else None

    def _admissible(self) -> list[Request]:
        """Waiting requests that fit now, shortest prompts first (they finish prefill soonest).

        Admission waits until a quarter of the slots are free (or everything waiting fits), so prefill
        forwards stay few and large. Which requests may join: see `_joinable`."""
        if not self.pending:
            return []
        candidates = sorted(self._joinable(), key=lambda r: len(r.prompt_ids))
        rows = len(self.batch) if self.batch is not None else 0
        free = self.limits.max_batch_size - rows
        if rows and free < min(len(candidates), max(1, self.limits.max_batch_size // 4)):
            return []
        tokens = sum(_budget(r) for r in self.batch.rows) if self.batch is not None else 0
        chosen: list[Request] = []
        for request in candidates:
            over_budget = tokens + _budget(request) > self.limits.max_batch_tokens
            if len(chosen) == free or (over_budget and (chosen or rows)):  # an empty batch takes one anyway
                break
            chosen.append(request)
            tokens += _budget(request)
        return chosen

    def _joinable(self) -> list[Request]:
        """Every waiting request when adapters mix in one batch. Otherwise rows share one adapter: while a
        batch runs, only requests for its adapter that arrived before the oldest request for another
        adapter join, so steady traffic on one adapter cannot hold another back (first come, first
        served between adapters); an idle runner starts with the oldest request's adapter."""
        if self.mixes_adapters:
            return list(self.pending)
        adapter = self.adapter if self.batch is not None else self.pending[0].adapter
        others = [r.submitted for r in self.pending if r.adapter != adapter]
        cutoff = min(others, default=float("inf"))
        return [r for r in self.pending if r.adapter == adapter and r.submitted <= cutoff]

    @contextlib.contextmanager
    def _adapters(self, rows: list[Request]) -> Iterator[dict[str, Any]]:
        """Forward arguments for these rows. Rows that share an adapter: it is made the active one (the
        single-adapter fast path). Mixed rows: the stacked LoRA forward (multi_lora.py), or else each row's
        adapter name for PEFT's own mixed-batch forward."""
        adapters = [r.adapter for r in rows]
        if len(set(adapters)) == 1:
            self.select_adapter(adapters[0])
            yield {}
        elif self.stacked_lora is not None and self.stacked_lora.usable:
            with self.stacked_lora.rows(adapters):  # type: ignore[arg-type]
                yield {}
        else:
            yield {"adapter_names": adapters}

    def _shared_prefix(self, admitted: list[Request]) -> SharedPrefix | None:
        """The tokens every admitted prompt begins with, run once, when there are enough of them (few-shot
        examples, a long system prompt: 186 few-shot prompts of the demo's eval prefill in ~1/3 of the time).
        Each prompt keeps at least its last token to run, for its first logits. Only for rows of one adapter:
        the prefix's keys and values depend on it."""
        if len(admitted) < 2 or len({r.adapter for r in admitted}) > 1:
            return None
        prompts = [r.prompt_ids for r in admitted]
        length = min(common_prefix_length(prompts), min(len(p) for p in prompts) - 1)
        if length < SHARED_PREFIX_MIN:
            return None
        try:
            with self._adapters(admitted[:1]) as forward:
                return SharedPrefix.compute(self.model, self.shape, prompts[0][:length], **forward)
        except Exception:  # each chunk then runs its whole prompts, and reports its own failure if any
            return None

    def _prefill(self, chunk: list[Request], prefix: SharedPrefix | None) -> DecodeBatch | None:
        """The chunk's rows after their first token; a failed prefill fails only this chunk's requests
        (the running batch and the other chunks have their own caches and go on)."""
        prompts = [r.prompt_ids for r in chunk]
        reserve = min(max(r.params.max_new_tokens for r in chunk), GROW_SLOTS)
        try:
            with self._adapters(chunk) as forward:
                batch, logits = DecodeBatch.prefill(self.model, self.shape, prompts, chunk, self.pad_id, reserve,
                                                    prefix, **forward)
        except Exception as error:
            for request in chunk:
                request.fail(error)
            return None
        self._take_tokens(batch, logits)
        return batch

    def _take_tokens(self, batch: DecodeBatch, logits: torch.Tensor) -> None:
        logits = self._constrained(batch.rows, logits)
        tokens, errors = self._choose(batch.rows, logits)
        batch.next_tokens = tokens
        self._record_logprobs(batch.rows, logits, tokens)
        finished = [self._accept(r, t, e) for r, t, e in zip(batch.rows, tokens.tolist(), errors)]
        if any(finished):
            alive = [i for i, f in enumerate(finished) if not f]
            if alive:
                batch.keep(alive)
            elif batch is self.batch:
                self.batch = None
            else:
                batch.rows = []

    def _constrained(self, rows: list[Request], logits: torch.Tensor) -> torch.Tensor:
        """The logits with every constrained row's disallowed tokens at -inf (a float copy; as is otherwise)."""
        constrained = [(i, r.matcher) for i, r in enumerate(rows) if r.matcher is not None]
        if not constrained or self.constraints is None:
            return logits
        logits = logits.float()  # choose_tokens samples in fp32 anyway; the copy leaves the model's output alone
        apply_masks(logits, constrained, self.constraints)
        return logits

    @staticmethod
    def _record_logprobs(rows: list[Request], logits: torch.Tensor, tokens: torch.Tensor) -> None:
        """Each asking row's token log-probability (and top alternatives), under its constrained distribution."""
        for i, request in enumerate(rows):
            if request.params.logprobs is not None:
                request.logprobs.append(token_logprobs(logits[i], int(tokens[i]), request.params.logprobs,
                                                       request.decode))

    @staticmethod
    def _choose(rows: list[Request], logits: torch.Tensor) -> tuple[torch.Tensor, list[BaseException | None]]:
        """The next token of every row. Should one row's sampling fail, the rows are sampled one by one so
        that only the failing ones fail (their token is a placeholder: the row leaves the batch)."""
        settings = [(r.params.temperature, r.params.top_p, r.rng) for r in rows]
        try:
            return choose_tokens(logits, settings), [None] * len(rows)
        except Exception:
            pass
        tokens = logits.argmax(dim=-1)
        errors: list[BaseException | None] = [None] * len(rows)
        for i, setting in enumerate(settings):
            try:
                tokens[i] = choose_tokens(logits[i : i + 1], [setting])[0]
            except Exception as error:
                errors[i] = error
        return tokens, errors

    def _accept(self, request: Request, token: int, error: BaseException | None) -> bool:
        if error is None:
            try:
                return request.accept(token, self.eos_ids)
            except Exception as failure:  # e.g. the tokenizer cannot decode: this request's problem alone
                error = failure
        return request.fail(error)

    @staticmethod
    def _reserve(batches: list[DecodeBatch]) -> int:
        return min(max(r.params.max_new_tokens - r.completion_tokens for b in batches for r in b.rows), GROW_SLOTS)


def _budget(request: Request) -> int:
    return len(request.prompt_ids) + request.params.max_new_tokens


def common_prefix_length(sequences: list[list[int]]) -> int:
    """How many leading items all the sequences share: those of the lexicographically first and last."""
    first, last = min(sequences), max(sequences)
    for i, (a, b) in enumerate(zip(first, last)):
        if a != b:
            return i
    return min(len(first), len(last))


def prefill_chunks(requests: list[Request], shared: int = 0) -> list[list[Request]]:
    """Consecutive runs of the (length-sorted) requests, each padded little and within PREFILL_TOKENS of
    what runs: the tokens after the `shared` prefix every prompt begins with."""
    chunks: list[list[Request]] = []
    current: list[Request] = []
    real = 0
    for request in sorted(requests, key=lambda r: len(r.prompt_ids)):
        size = len(request.prompt_ids) - shared
        padded = size * (len(current) + 1)  # sorted, so this request is the longest so far
        if current and (padded > PREFILL_TOKENS or padded > PREFILL_PADDING * (real + size)):
            chunks.append(current)
            current, real = [], 0
        current.append(request)
        real += size
    if current:
        chunks.append(current)
    return chunks
