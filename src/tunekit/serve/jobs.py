"""From an OpenAI request body to a checked generation job: limits, the adapter, plain messages, parameters,
the output constraint, logprobs and the number of choices.

Everything here raises a 4xx ApiError naming the offending field, before any model time is spent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunekit.config_stages import ServeConfig
from tunekit.serve.errors import ApiError
from tunekit.serve.schemas import ROLE_ALIASES, ChatCompletionRequest, CompletionRequest
from tunekit.serve.structured import requested_constraint


@dataclass
class Job:
    endpoint: str  # "/v1/chat/completions" | "/v1/completions"
    model: str  # the name the client asked for
    adapter: str | None  # what generates it (None: the bare base model)
    messages: list[dict[str, str]] | None  # chat
    prompt: str | None  # text completion
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    n: int = 1  # choices, generated from one prepared prompt
    logprobs: int | None = None  # None: none; k: each token's log-probability and its k most likely rivals
    constraint: Any = None  # a tunekit.generate Constraint the answer must match, or None
    constraint_param: str | None = None  # the field that asked for it, named when it cannot be enforced
    deadline: float | None = None  # time.perf_counter() by which the answer must be done (serve.timeout_s)

    def params(self, choice: int = 0) -> Any:
        """Choice i of a seeded request decodes with seed + i: the choices differ, and each is reproducible."""
        from tunekit.generate import GenerationParams

        return GenerationParams(max_new_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                                stop=list(self.stop), seed=None if self.seed is None else self.seed + choice,
                                constraint=self.constraint, logprobs=self.logprobs)

    def logged_messages(self) -> list[dict[str, str]]:
        """What the request log stores as the input turns."""
        return self.messages if self.messages is not None else [{"role": "user", "content": self.prompt or ""}]


def chat_job(body: ChatCompletionRequest, serve: ServeConfig, adapter_for: Any) -> Job:
    requested = body.max_completion_tokens or body.max_tokens
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    messages = [_plain(m) for m in body.messages]
    _check_chars(sum(len(m["content"]) for m in messages), serve, "messages")
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true.", param="top_logprobs")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    return Job(endpoint="/v1/chat/completions", messages=messages, prompt=None, logprobs=logprobs,
               **_common(body, serve, adapter_for, requested, param))


def completion_job(body: CompletionRequest, serve: ServeConfig, adapter_for: Any) -> Job:
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]  # the schema allows one
    _check_chars(len(prompt), serve, "prompt")
    return Job(endpoint="/v1/completions", messages=None, prompt=prompt, logprobs=body.logprobs,
               **_common(body, serve, adapter_for, body.max_tokens, "max_tokens"))


def _check_chars(chars: int, serve: ServeConfig, param: str) -> None:
    """Refuse text that cannot fit before it is rendered and tokenized (that work grows with its length)."""
    limit = serve.input_chars_limit
    if chars > limit:
        raise ApiError(400, f"The input is {chars} characters, above this server's limit of {limit} "
                            f"(serve.max_input_chars).", param=param, code="context_length_exceeded")


def _common(body: Any, serve: ServeConfig, adapter_for: Any, requested: int | None, param: str) -> dict[str, Any]:
    if requested is not None and requested > serve.max_tokens_limit:
        raise ApiError(400, f"{param} is {requested}, above this server's limit of {serve.max_tokens_limit}.",
                       param=param, code="max_tokens_exceeded")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    adapter = adapter_for(body.model)  # 404 for an unknown name, before the checks that need more work
    constraint, constraint_param = requested_constraint(body)
    return {
        "model": body.model,
        "adapter": adapter,
        "max_tokens": requested or serve.max_tokens_limit,
        # Greedy unless asked otherwise: served answers are then the ones `tunekit eval` measured.
        "temperature": body.temperature if body.temperature is not None else 0.0,
        "top_p": body.top_p if body.top_p is not None else 1.0,
        "stop": stop,
        "seed": body.seed,
        "stream": bool(body.stream),
        "include_usage": bool(body.stream_options and body.stream_options.include_usage),
        "n": _choices(body, serve),
        "constraint": constraint,
        "constraint_param": constraint_param,
    }


def _choices(body: Any, serve: ServeConfig) -> int:
    n = body.n or 1
    if n > serve.max_n:
        raise ApiError(400, f"n is {n}, above this server's limit of {serve.max_n} (serve.max_n).", param="n")
    return n


def _plain(message: Any) -> dict[str, str]:
    """{"role", "content"} with text content: what chat templates take."""
    content = message.content
    if isinstance(content, list):  # text parts only: the schema refuses images and audio
        content = "\n".join(part.text or "" for part in content)
    return {"role": ROLE_ALIASES.get(message.role, message.role), "content": content or ""}
