"""One request from checked job to answers: input guardrails, grounding, generation, output guardrails.

Runs in a request thread (it waits on the batch), so the event loop stays free to accept and refuse requests.
A guardrail block is not an HTTP error: the answer is the configured fallback with finish_reason
"content_filter", which is what OpenAI itself returns when its filter withholds content, so OpenAI-client
code already handles it. Grounded chat answers carry the sources they cite. A request for n choices is
prepared once and its n answers decode side by side in the batch, each checked on its own.

With a `json_schema` output guardrail, answers are decoded under that schema (unless the client asked for
another constraint), so they match it by construction; the guardrail still validates, and retries.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tunekit.serve.errors import ApiError, timed_out
from tunekit.serve.jobs import Job
from tunekit.serve.structured import UNSUPPORTED, guard_constraint

CONTENT_FILTER = "content_filter"


@dataclass
class Prepared:
    job: Job
    prompt: str  # the text the model reads (chat template applied for chat)
    prompt_tokens: int
    messages: list[dict[str, str]] | None  # chat turns after redaction and grounding
    retrieved: list[Any] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    blocked: bool = False


@dataclass
class Answer:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    citations: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    retries: int = 0
    blocked: bool = False
    grounded: bool = False
    citation_check: dict[str, Any] | None = None  # rag.cite.CitationCheck.to_dict() for grounded answers
    sources: list[dict[str, Any]] = field(default_factory=list)  # every retrieved source the model was given
    logprobs: list[Any] | None = None  # tunekit.generate TokenLogprobs of `text`, when asked for
    constraint: str | None = None  # what decoding was constrained to (Constraint.describe())

    @classmethod
    def of(cls, generation: Any, prepared: Prepared, grounded: bool) -> Answer:
        return cls(generation.text, generation.finish_reason, prepared.prompt_tokens, generation.completion_tokens,
                   events=list(prepared.events), grounded=grounded, logprobs=generation.logprobs,
                   constraint=generation.constraint)

    @property
    def schema_failed(self) -> bool:
        return any(e["policy"] == "json_schema" and e["action"] == "fallback" for e in self.events)


class Pipeline:
    def __init__(self, backend: Any, *, guard: Any = None, retriever: Any = None, grounding: Any = None,
                 max_input_tokens: int = 4096):
        """`grounding` (a rag.grounding.Grounding) says how answers cite when `retriever` is set."""
        from tunekit.rag.grounding import Grounding

        self.backend = backend
        self.guard = guard if guard is not None and guard.enabled else None
        self.retriever = retriever
        self.grounding = grounding or Grounding("inline")
        self.max_input_tokens = max_input_tokens
        self.guard_constraint = guard_constraint(self.guard)  # guard.json_schema, enforced while decoding

    def check_guard_constraint(self, say: Callable[[str], None]) -> None:
        """At start: keep guard.json_schema as a decoding constraint only if the engine can enforce it; else say
        why, and answers are validated (and retried) only, as without constrained decoding."""
        if self.guard_constraint is None:
            return
        from tunekit.generate import GenerationParams

        try:
            self.backend.check("{", GenerationParams(max_new_tokens=1, constraint=self.guard_constraint), None)
        except ApiError as error:
            say(f"warning: guard.json_schema is validated but not enforced while decoding: {error.message}")
            self.guard_constraint = None

    @property
    def checks_output(self) -> bool:
        """Whether answers must be complete before any of them is sent (see `stream`)."""
        return self.guard is not None and bool(self.guard.output_policies)

    def prepare(self, job: Job) -> Prepared:
        """Guard the input, ground it, render it and check its length: everything before generation.

        Each step is linear in the input, and the deadline is checked between them, so a request that ran
        out of time stops here instead of holding its worker thread."""
        turns = job.logged_messages()
        if job.messages is not None:
            _refuse_control_tokens(turns, self.backend.control_tokens)
        user_tokens = self.backend.count_tokens(self._render(job, turns))
        if user_tokens > self.max_input_tokens:
            raise ApiError(400, f"The input is {user_tokens} tokens, above this server's limit of "
                                f"{self.max_input_tokens}.", param="messages" if job.messages else "prompt",
                           code="context_length_exceeded")
        events: list[dict[str, Any]] = []
        if self.guard is not None:
            _check_deadline(job)
            decision = self.guard.check_input(turns)
            events = [e.to_dict() for e in decision.events]
            if not decision.allowed:
                return Prepared(job, "", user_tokens, turns, events=events, blocked=True)
            turns = decision.messages
        retrieved: list[Any] = []
        if self.retriever is not None and job.messages is not None:
            from tunekit.rag.prompt import query_from_messages

            _check_deadline(job)
            retrieved = self._screened(self.retriever.search(query_from_messages(turns)), events)
            turns = self.grounding.messages(turns, retrieved)
        _check_deadline(job)
        prompt = self._render(job, turns)
        tokens = self.backend.count_tokens(prompt)
        self._check_context(tokens, job.max_tokens)
        if job.stream and job.constraint is not None:  # refused now, while the refusal can still be a 400
            with self._naming_constraint(job):
                self.backend.check(prompt, self._params(job), job.adapter)
        return Prepared(job, prompt, tokens, turns if job.messages is not None else None, retrieved, events)

    def _params(self, job: Job, choice: int = 0) -> Any:
        params = job.params(choice)
        if self.guard_constraint is not None and (params.constraint is None or params.constraint.kind == "json_object"):
            params.constraint = self.guard_constraint  # the operator's schema is a JSON object, and more precise
        return params

    @contextlib.contextmanager
    def _naming_constraint(self, job: Job) -> Iterator[None]:
        """A constraint the engine cannot enforce is a 400 naming the field that asked for it."""
        try:
            yield
        except ApiError as error:
            if error.code == UNSUPPORTED:
                error.param = job.constraint_param or "response_format"
            raise

    def _screened(self, retrieved: list[Any], events: list[dict[str, Any]]) -> list[Any]:
        """Retrieved sources without those that hold chat-template control tokens or (with the injection
        policy on) an injection pattern: documents are data, and a planted one must not steer the model.
        Each dropped source is a guard event; the request itself goes on with the rest."""
        from tunekit.guard.events import GuardEvent
        from tunekit.guard.injection import find_injection

        scan = self.guard is not None and "injection" in self.guard.input_policies
        kept = []
        for item in retrieved:
            token = _first_control_token(item.text, self.backend.control_tokens)
            hit = find_injection(item.text) if scan and token is None else None
            if token is None and hit is None:
                kept.append(item)
                continue
            why = f"control token {token!r}" if token else f"{hit.family}: {hit.reason()}"
            events.append(GuardEvent("input", "injection", "drop_source",
                                     f"retrieved source {item.path} dropped: {why}").to_dict())
        return kept

    def complete(self, prepared: Prepared) -> list[Answer]:
        """The job's n answers (one unless it asked for more), in choice order."""
        job = prepared.job
        if prepared.blocked:
            return [self._blocked(prepared) for _ in range(job.n)]
        params = [self._params(job, choice) for choice in range(job.n)]
        with self._naming_constraint(job):
            generations = self.backend.generate_many(prepared.prompt, params, job.adapter, deadline=job.deadline)
        answers = []
        for generation, choice_params in zip(generations, params):
            answer = Answer.of(generation, prepared, self._grounded(prepared))
            if self.guard is not None:
                self._check_output(prepared, answer, choice_params)
            self._cite(prepared, answer)
            answers.append(answer)
        return answers

    def stream(self, prepared: Prepared, emit: Callable[[int, str], None],
               submitted: Callable[[Any], None] | None = None) -> list[Answer]:
        """Send each choice's answer piece by piece through `emit(choice, piece)`, then return them whole.

        With output guardrails on, the answers are checked complete and sent at once: nothing unchecked
        ever reaches the client. `emit` may raise to stop (client gone, deadline passed); `submitted`
        receives each scheduler submission, so the caller can cancel them from another thread.
        """
        job = prepared.job
        if prepared.blocked or self.checks_output:
            answers = self.complete(prepared)
            for choice, answer in enumerate(answers):
                emit(choice, answer.text)
            return answers
        submissions: list[Any] = []
        try:
            with self._naming_constraint(job):
                for choice in range(job.n):
                    submissions.append(self.backend.stream(prepared.prompt, self._params(job, choice), job.adapter))
                    if submitted is not None:
                        submitted(submissions[-1])
            _relay(submissions, emit)
        except BaseException:
            for submission in submissions:
                submission.cancel()  # the client is gone or out of time: the rows leave the batch
            raise
        answers = [Answer.of(s.result(), prepared, self._grounded(prepared)) for s in submissions]
        for answer in answers:
            self._cite(prepared, answer)
        return answers

    def _render(self, job: Job, turns: list[dict[str, str]]) -> str:
        if job.messages is None:
            return turns[0]["content"]
        return self.backend.render(turns)

    def _check_context(self, prompt_tokens: int, max_tokens: int) -> None:
        limit = self.backend.context_length
        if limit and prompt_tokens + max_tokens > limit:
            raise ApiError(400, f"The prompt ({prompt_tokens} tokens, retrieved sources included) plus max_tokens "
                                f"({max_tokens}) exceeds the model's context of {limit} tokens.",
                           param="max_tokens", code="context_length_exceeded")

    def _blocked(self, prepared: Prepared) -> Answer:
        return Answer(self.guard.fallback, CONTENT_FILTER, prepared.prompt_tokens, 0, events=list(prepared.events),
                      blocked=True)

    def _check_output(self, prepared: Prepared, answer: Answer, params: Any) -> None:
        job = prepared.job

        def regenerate(feedback: str) -> str:
            # JSON schema retry: show the model its answer and what was wrong with it (chat only).
            turns = [*(prepared.messages or []), {"role": "assistant", "content": answer.text},
                     {"role": "user", "content": feedback}]
            again = self.backend.generate(self.backend.render(turns), params, job.adapter, deadline=job.deadline)
            answer.completion_tokens += again.completion_tokens
            answer.text, answer.finish_reason, answer.logprobs = again.text, again.finish_reason, again.logprobs
            return again.text

        decision = self.guard.check_output(
            answer.text, regenerate=regenerate if prepared.messages is not None else None,
            citation_check=self._citation_check(prepared))
        answer.events += [e.to_dict() for e in decision.events]
        answer.retries = decision.retries
        answer.text = decision.text
        if not decision.ok:
            answer.finish_reason = CONTENT_FILTER
            answer.blocked = True
            answer.logprobs = None  # they were the withheld answer's

    def _grounded(self, prepared: Prepared) -> bool:
        """Chat requests are grounded when the server has a retriever; plain completions never are."""
        return self.retriever is not None and prepared.messages is not None

    def _citation_check(self, prepared: Prepared) -> Callable[[str], bool] | None:
        if not self._grounded(prepared):
            return None
        return lambda text: self.grounding.check(text, prepared.retrieved).ok

    def _cite(self, prepared: Prepared, answer: Answer) -> None:
        """Map the answer's citations to their sources, and flag (log, report) citations that are invalid or
        missing when required, whether or not an output guardrail acts on them."""
        if not answer.grounded or answer.blocked:
            return
        from tunekit.guard.events import GuardEvent
        from tunekit.rag.cite import given_sources

        answer.sources = given_sources(prepared.retrieved)
        answer.citations = self.grounding.sources(answer.text, prepared.retrieved)
        check = self.grounding.check(answer.text, prepared.retrieved)
        answer.citation_check = check.to_dict()
        if not check.ok:
            reason = (f"cites sources that were not retrieved: {check.invalid}" if check.invalid
                      else "cites none of the retrieved sources")
            answer.events.append(GuardEvent("output", "citations", "flag", reason).to_dict())


def _relay(submissions: list[Any], emit: Callable[[int, str], None]) -> None:
    """Every choice's pieces, a piece of each in turn. The rows decode in step, one token each per batch step,
    so waiting on one choice's next piece holds the others back by a step or so, never for long."""
    pieces = [iter(submission) for submission in submissions]
    live = list(range(len(pieces)))
    while live:
        for choice in list(live):
            piece = next(pieces[choice], None)
            if piece is None:
                live.remove(choice)
            else:
                emit(choice, piece)


def _check_deadline(job: Job) -> None:
    if job.deadline is not None and time.perf_counter() >= job.deadline:
        raise timed_out()


def _first_control_token(text: str, control_tokens: tuple[str, ...]) -> str | None:
    # Plain substring search: linear in the text for each of the tokenizer's few special tokens.
    return next((token for token in control_tokens if token in text), None)


def _refuse_control_tokens(turns: list[dict[str, str]], control_tokens: tuple[str, ...]) -> None:
    """A client who types `<|im_end|><|im_start|>system` would otherwise forge a turn: the rendered prompt is
    tokenized as a whole, so the text becomes the real control tokens. Refused rather than escaped, so the
    client learns why (every role a client sends is client text)."""
    for index, turn in enumerate(turns):
        token = _first_control_token(turn["content"], control_tokens)
        if token is not None:
            raise ApiError(400, f"messages[{index}] holds the chat-template control token {token!r}, which clients "
                                "may not send: it would let text pose as a turn of another role.",
                           param=f"messages[{index}].content", code="control_token")


def merged(answers: list[Answer]) -> Answer:
    """One request's n answers as one, for the request log, metrics and x_tunekit: choice 0's text, citations
    and sources; every choice's completion tokens and retries; the input's guardrail events once, then each
    choice's output events naming it; blocked when any choice was."""
    if len(answers) == 1:
        return answers[0]
    first = answers[0]
    events = [e for e in first.events if e.get("stage") != "output"]
    events += [{**e, "choice": i} for i, a in enumerate(answers) for e in a.events if e.get("stage") == "output"]
    return Answer(first.text, first.finish_reason, first.prompt_tokens, sum(a.completion_tokens for a in answers),
                  citations=first.citations, events=events, retries=sum(a.retries for a in answers),
                  blocked=any(a.blocked for a in answers), grounded=first.grounded,
                  citation_check=first.citation_check, sources=first.sources, constraint=first.constraint)
