"""From an OpenAI request body to a checked generation job: limits, the adapter, plain messages, parameters.

Everything here raises a 4xx ApiError naming the offending field, before any model time is spent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunekit.config_stages import ServeConfig
from tunekit.serve.errors import ApiError
from tunekit.serve.schemas import ROLE_ALIASES, ChatCompletionRequest, CompletionRequest


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
    echo: bool = False
    deadline: float | None = None  # time.perf_counter() by which the answer must be done (serve.timeout_s)

    def params(self) -> Any:
        from tunekit.generate import GenerationParams

        return GenerationParams(max_new_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                                stop=list(self.stop), seed=self.seed)

    def logged_messages(self) -> list[dict[str, str]]:
        """What the request log stores as the input turns."""
        return self.messages if self.messages is not None else [{"role": "user", "content": self.prompt or ""}]


def chat_job(body: ChatCompletionRequest, serve: ServeConfig, adapter_for: Any) -> Job:
    requested = body.max_completion_tokens or body.max_tokens
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    messages = [_plain(m) for m in body.messages]
    _check_chars(sum(len(m["content"]) for m in messages), serve, "messages")
    return Job(endpoint="/v1/chat/completions", messages=messages,
               prompt=None, **_common(body, serve, adapter_for, requested, param))


def completion_job(body: CompletionRequest, serve: ServeConfig, adapter_for: Any) -> Job:
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]  # the schema allows one
    _check_chars(len(prompt), serve, "prompt")
    return Job(endpoint="/v1/completions", messages=None, prompt=prompt,
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
    return {
        "model": body.model,
        "adapter": adapter_for(body.model),  # 404 for an unknown name
        "max_tokens": requested or serve.max_tokens_limit,
        # Greedy unless asked otherwise: served answers are then the ones `tunekit eval` measured.
        "temperature": body.temperature if body.temperature is not None else 0.0,
        "top_p": body.top_p if body.top_p is not None else 1.0,
        "stop": stop,
        "seed": body.seed,
        "stream": bool(body.stream),
        "include_usage": bool(body.stream_options and body.stream_options.include_usage),
    }


def _plain(message: Any) -> dict[str, str]:
    """{"role", "content"} with text content: what chat templates take."""
    content = message.content
    if isinstance(content, list):  # text parts only: the schema refuses images and audio
        content = "\n".join(part.text or "" for part in content)
    return {"role": ROLE_ALIASES.get(message.role, message.role), "content": content or ""}
