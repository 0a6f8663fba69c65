"""Request and response bodies of the OpenAI-compatible API, as pydantic models.

They double as the server's OpenAPI document (which schemathesis tests against). Requests accept and
ignore fields we do not use, as OpenAI's own SDKs send many optional ones; fields we cannot honour
(n > 1, logprobs, tools, echo) are constrained in the schema itself, so the document says what is
refused and a request asking for them gets a 400 instead of being silently answered without them.

Sizes are limited here, in the schema, so a hostile body is refused while it is parsed, before any
rendering or tokenizing: message count, name lengths and stop sequences have fixed limits (below), and
the characters of all message text together are checked against `serve.max_input_chars` in jobs.py.
Every client string must be valid Unicode: JSON can carry a lone surrogate ("\\ud800"), which no
tokenizer, log or error body can encode.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# "developer" is OpenAI's newer name for the system turn; chat templates only know "system".
ROLE_ALIASES = {"developer": "system"}
MAX_STOP_SEQUENCES = 4  # OpenAI's own limit
MAX_STOP_CHARS = 256  # each stop sequence is searched for in the output at every step
MAX_MESSAGES = 512
MAX_NAME_CHARS = 256  # model, user and message names: identifiers, not text


def _valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"holds an unpaired surrogate (\\u{ord(text[exc.start]):04x}) at character {exc.start}: "
                         "send valid Unicode") from None
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]
NonEmptyText = Annotated[str, Field(min_length=1), AfterValidator(_valid_unicode)]
Name = Annotated[str, Field(max_length=MAX_NAME_CHARS), AfterValidator(_valid_unicode)]
StopText = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS), AfterValidator(_valid_unicode)]


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(Lenient):
    type: Literal["text"] = Field(description="only text parts are supported")
    text: Text | None = None


class ChatMessage(Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | Annotated[list[ContentPart], Field(max_length=MAX_MESSAGES)] | None = None
    name: Name | None = None


class StreamOptions(Lenient):
    include_usage: bool = False


class SamplingFields(Lenient):
    """What chat and text completions share."""

    model: Name = Field(description="a name from GET /v1/models: the base model or one adapter")
    max_tokens: int | None = Field(None, ge=1, description="default and maximum: serve.max_tokens_limit")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="default 0: greedy, as evaluated")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1, le=1, description="only 1 is supported")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOP_SEQUENCES)] | None = Field(
        None, description=f"up to {MAX_STOP_SEQUENCES} stop sequences of up to {MAX_STOP_CHARS} characters")
    seed: int | None = None
    user: Name | None = None
    logprobs: Literal[False, 0] | None = Field(None, description="not supported: omit it or send false")


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens")
    tools: list[dict[str, Any]] | None = Field(None, max_length=0, description="tool calling is not supported")


class CompletionRequest(SamplingFields):
    prompt: NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1, max_length=1)] = Field(
        description="one prompt (a list must hold exactly one)")
    echo: Literal[False] | None = Field(False, description="not supported")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Citation(BaseModel):
    model_config = ConfigDict(extra="allow")  # whatever rag.citation_sources reports per source


class TunekitInfo(BaseModel):
    """tunekit's own extra field: the OpenAI SDKs keep unknown fields and ignore them."""

    adapter: str | None = None
    guard_events: list[dict[str, Any]] = Field(default_factory=list)
    guard_retries: int = 0
    grounded: bool = False
    citation_check: dict[str, Any] | None = None  # grounded answers: cited, invalid, missing, ok
    sources: list[dict[str, Any]] = Field(default_factory=list)  # the retrieved sources [1], [2], ... given
    latency_ms: float | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    citations: list[Citation] = Field(default_factory=list)
    x_tunekit: TunekitInfo = Field(default_factory=TunekitInfo)


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: None = None


class Completion(BaseModel):
    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    x_tunekit: TunekitInfo = Field(default_factory=TunekitInfo)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tunekit"
    root: str = Field(description="the base model every adapter applies to")
    parent: str | None = Field(None, description="for an adapter: the base model's id")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    """Without a key (when the server has keys) only `status`: the rest says what runs and how busy it is."""

    status: Literal["ok", "degraded"]
    models: list[str] | None = None
    preflight: dict[str, Any] | None = None
    in_flight: int | None = None
    queued: int | None = None


class LoadLoraAdapterRequest(Lenient):
    """vLLM's body for /v1/load_lora_adapter; `lora_path` is a tunekit run folder on the server."""

    lora_name: Name = Field(description="the model name clients will ask for")
    lora_path: Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_valid_unicode)]


class UnloadLoraAdapterRequest(Lenient):
    lora_name: Name


class AdapterChange(BaseModel):
    """What an admin call changed, and the models served now."""

    object: Literal["lora_adapter"] = "lora_adapter"
    lora_name: str
    status: Literal["loaded", "unloaded"]
    models: list[str]
    preflight: dict[str, Any] | None = Field(None, description="the loaded adapter's check against its eval")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"
