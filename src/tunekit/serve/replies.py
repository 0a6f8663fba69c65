"""Response bodies of the OpenAI-compatible API, as pydantic models (the request bodies are in schemas.py).

They double as the server's OpenAPI document: schemathesis checks every response against them.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Citation(BaseModel):
    model_config = ConfigDict(extra="allow")  # whatever rag.citation_sources reports per source


class TunekitInfo(BaseModel):
    """tunekit's own extra field: the OpenAI SDKs keep unknown fields and ignore them."""

    adapter: str | None = None
    guard_events: list[dict[str, Any]] = Field(default_factory=list)  # with n > 1, each names its "choice"
    guard_retries: int = 0
    grounded: bool = False
    citation_check: dict[str, Any] | None = None  # grounded answers: cited, invalid, missing, ok
    sources: list[dict[str, Any]] = Field(default_factory=list)  # the retrieved sources [1], [2], ... given
    constraint: str | None = None  # what decoding was constrained to ("json schema", "regex", ...), if anything
    latency_ms: float | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = Field(None, description="the token's UTF-8 bytes")


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: ChatLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    citations: list[Citation] = Field(default_factory=list)  # choice 0's, when n > 1
    x_tunekit: TunekitInfo = Field(default_factory=TunekitInfo)


class CompletionLogprobs(BaseModel):
    """The legacy completions shape: parallel lists, one entry per generated token."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    x_tunekit: TunekitInfo = Field(default_factory=TunekitInfo)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or with encoding_format base64 their float32 bytes")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tunekit"
    root: str = Field(description="the base model every adapter applies to (the embedding model: itself)")
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


class AdapterChange(BaseModel):
    """What an admin call changed, and the models served now."""

    object: Literal["lora_adapter"] = "lora_adapter"
    lora_name: str
    status: Literal["loaded", "unloaded"]
    models: list[str]
    preflight: dict[str, Any] | None = Field(None, description="the loaded adapter's check against its eval")
