"""Request bodies of the OpenAI-compatible API, as pydantic models (the response bodies are in replies.py).

They double as the server's OpenAPI document (which schemathesis tests against). A body may hold only fields
the server honours or that cannot change the answer; any other field is a 400 naming it ("audio is not
supported by this server"), because a field dropped in silence is an answer the client did not ask for:
- honoured: what the answer depends on (model, messages, max_tokens, n, logprobs, response_format, ...);
- accepted, whatever the value: fields that change nothing here (user, metadata, store, service_tier,
  parallel_tool_calls, prompt_cache_key, safety_identifier);
- accepted only with the value that changes nothing (`no_op`): frequency_penalty 0, logit_bias {}, tools [],
  tool_choice "none" or "auto" (with no tools), echo false... Any other value is a 400 naming field and value.

Sizes are limited here, in the schema, so a hostile body is refused while it is parsed, before any
rendering or tokenizing: message count, name lengths, stop sequences, schemas and patterns have fixed limits,
and the characters of all message text together are checked against `serve.max_input_chars` in jobs.py.
Every client string must be valid Unicode: JSON can carry a lone surrogate ("\\ud800"), which no
tokenizer, log or error body can encode.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from tunekit.rag.embed import EMBEDDING_DIM
from tunekit.serve.structured import (
    MAX_CHOICE_CHARS,
    MAX_CHOICES,
    MAX_PATTERN_CHARS,
    MAX_SCHEMA_CHARS,
    bounded_schema,
)

# "developer" is OpenAI's newer name for the system turn; chat templates only know "system".
ROLE_ALIASES = {"developer": "system"}
MAX_STOP_SEQUENCES = 4  # OpenAI's own limit
MAX_STOP_CHARS = 256  # each stop sequence is searched for in the output at every step
MAX_MESSAGES = 512
MAX_NAME_CHARS = 256  # model, user and message names: identifiers, not text
MAX_N = 128  # the schema's bound; serve.max_n (default 8) is the server's own, checked in jobs.py
MAX_TOP_LOGPROBS = 20  # OpenAI's limits: chat top_logprobs, and legacy completions' logprobs
MAX_COMPLETION_LOGPROBS = 5
MAX_EMBEDDING_INPUTS = 256


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
Flag = StrictBool  # true or false, as the document says: not 1, "yes" or "on"


def _same(value: Any, allowed: Any) -> bool:
    return isinstance(value, bool) == isinstance(allowed, bool) and value == allowed  # False is not 0 here


def no_op(allowed: tuple[Any, ...], why: str, schema: dict[str, Any]) -> Any:
    """A field accepted only as null or one of `allowed`, the values that leave the answer as it is; `schema` is
    what the OpenAPI document says about it (null added)."""

    def check(value: Any) -> Any:
        if value is None or any(_same(value, a) for a in allowed):
            return value
        raise PydanticCustomError("unsupported_value", "is not supported by this server: {why}", {"why": why})

    document = {"anyOf": [schema, {"type": "null"}], "description": f"accepted only as null or the no-op: {why}"}
    return Annotated[Any, AfterValidator(check), WithJsonSchema(document)]


class Strict(BaseModel):
    """A request body: a field it does not declare is refused (errors.from_validation names it)."""

    model_config = ConfigDict(extra="forbid")


ZERO = {"type": "number", "minimum": 0, "maximum": 0}
NoPenalty = no_op((0,), "only 0 (penalties are not implemented)", ZERO)
NoBias = no_op(({},), "only {} (logit_bias is not implemented)", {"type": "object", "maxProperties": 0})
NoTools = no_op(([],), "only [] (tool calling is not implemented)", {"type": "array", "maxItems": 0})
NoToolChoice = no_op(("none", "auto"), "only none or auto, which mean the same without tools",
                     {"enum": ["none", "auto"]})
NoValue = no_op((), "only null", {"not": {}})


class ContentPart(Strict):
    type: Literal["text"] = Field(description="only text parts are supported")
    text: Text | None = None


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | Annotated[list[ContentPart], Field(max_length=MAX_MESSAGES)] | None = None
    name: Name | None = None
    # What an SDK's own assistant message holds when a client sends it back as history (all null here).
    refusal: NoValue = None
    tool_calls: NoTools = None
    function_call: NoValue = None
    audio: NoValue = None
    annotations: no_op(([],), "only [] (no annotations are made)", {"type": "array", "maxItems": 0}) = None


class StreamOptions(Strict):
    include_usage: Flag = False
    include_obfuscation: Flag | None = Field(None, description="accepted; no padding is ever added")


SchemaDict = Annotated[dict[str, Any], AfterValidator(bounded_schema)]  # validity: structured.check_schema
Pattern = Annotated[str, Field(min_length=1, max_length=MAX_PATTERN_CHARS, json_schema_extra={"format": "regex"}),
                    AfterValidator(_valid_unicode)]  # its syntax is the engine's to judge (a 400 naming the error)
Label = Annotated[str, Field(min_length=1, max_length=MAX_CHOICE_CHARS), AfterValidator(_valid_unicode)]


class JsonSchemaFormat(Strict):
    name: str = Field(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: Annotated[Text, Field(max_length=4096)] | None = None
    schema_: SchemaDict | None = Field(None, alias="schema", description=f"a JSON schema of up to "
                                       f"{MAX_SCHEMA_CHARS} characters; local $refs only")
    strict: Flag | None = Field(None, description="accepted either way: the schema is always enforced")


class ResponseFormat(Strict):
    # The document says what the validator below checks: json_schema goes with its type, and only with it.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [
        {"properties": {"type": {"enum": ["text", "json_object"]}, "json_schema": {"type": "null"}}},
        {"properties": {"type": {"const": "json_schema"}, "json_schema": {"type": "object"}},
         "required": ["json_schema"]},
    ]})

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type json_schema, and only with it")
        return self


class StructuredOutputs(Strict):
    """vLLM's field (OpenAI clients send it in extra_body): exactly one way to constrain the output."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [
        {"properties": {name: {"type": kind}}, "required": [name]}
        for name, kind in (("json", "object"), ("regex", "string"), ("choice", "array"), ("json_object", "boolean"))
    ]})

    json_: SchemaDict | None = Field(None, alias="json", description="a JSON schema")
    regex: Pattern | None = Field(None, description="the whole output matches it")
    choice: Annotated[list[Label], Field(min_length=1, max_length=MAX_CHOICES)] | None = Field(
        None, description="the output is exactly one of these")
    json_object: Literal[True] | None = Field(None, description="any JSON object")

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputs:
        given = [f for f in ("json_", "regex", "choice", "json_object") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of json, regex, choice or json_object")
        return self


# Checked in jobs.py and structured.py, and said in the document, so that it describes exactly what is accepted.
ONE_CONSTRAINT = {"not": {"required": ["response_format", "structured_outputs"], "properties": {
    "response_format": {"type": "object"}, "structured_outputs": {"type": "object"}}}}
TOP_NEEDS_LOGPROBS = {"not": {"required": ["top_logprobs"], "properties": {
    "top_logprobs": {"type": "integer"}, "logprobs": {"not": {"const": True}}}}}


class SamplingFields(Strict):
    """What chat and text completions share."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=ONE_CONSTRAINT)

    model: Name = Field(description="a name from GET /v1/models: the base model or one adapter")
    max_tokens: int | None = Field(None, ge=1, description="default and maximum: serve.max_tokens_limit")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="default 0: greedy, as evaluated")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1, le=MAX_N, description="choices to generate (at most serve.max_n); "
                          "seeded requests use seed + i for choice i; not with stream")
    stream: Flag | None = False
    stream_options: StreamOptions | None = None
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOP_SEQUENCES)] | None = Field(
        None, description=f"up to {MAX_STOP_SEQUENCES} stop sequences of up to {MAX_STOP_CHARS} characters")
    seed: int | None = None
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    # Accepted with any value: they change nothing about the answer.
    user: Name | None = None
    metadata: Annotated[dict[Annotated[Text, Field(max_length=64)], Annotated[Text, Field(max_length=512)]],
                        Field(max_length=16)] | None = None
    store: Flag | None = Field(None, description="accepted; the operator's request log is written either way")
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    prompt_cache_key: Name | None = None
    safety_identifier: Name | None = None
    frequency_penalty: NoPenalty = None
    presence_penalty: NoPenalty = None
    logit_bias: NoBias = None


class ChatCompletionRequest(SamplingFields):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"allOf": [ONE_CONSTRAINT, TOP_NEEDS_LOGPROBS]})

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens")
    logprobs: Flag | None = Field(None, description="each answer token's log-probability")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="with logprobs: that many "
                                     "most likely alternatives per token")
    tools: NoTools = None
    tool_choice: NoToolChoice = None
    functions: NoTools = None
    function_call: NoToolChoice = None
    parallel_tool_calls: Flag | None = None
    modalities: no_op((["text"],), 'only ["text"]', {"const": ["text"]}) = None


class CompletionRequest(SamplingFields):
    prompt: NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1, max_length=1)] = Field(
        description="one prompt (a list must hold exactly one)")
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS, description="each answer token's "
                                 "log-probability and that many most likely alternatives")
    echo: no_op((False,), "only false (the prompt is not repeated)", {"const": False}) = None
    best_of: no_op((1,), "only 1", {"const": 1}) = None
    suffix: no_op(("",), 'only "" (no insertion)', {"const": ""}) = None
    # vLLM's field: a gateway in front of an engine (serve/remote.py) sends its rendered prompt with it false.
    add_special_tokens: no_op((False,), "only false (a prompt is read as its text, no BOS added)",
                              {"const": False}) = None


EmbeddingText = Annotated[str, Field(min_length=1), AfterValidator(_valid_unicode)]


class EmbeddingRequest(Strict):
    model: Name = Field(description="the embedding model's id from GET /v1/models")
    input: EmbeddingText | Annotated[list[EmbeddingText], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)] = (
        Field(description=f"a text, or up to {MAX_EMBEDDING_INPUTS} texts"))
    encoding_format: Literal["float", "base64"] = Field("float", description="base64: little-endian float32")
    dimensions: no_op((EMBEDDING_DIM,), f"only {EMBEDDING_DIM}, the model's own", {"const": EMBEDDING_DIM}) = None
    user: Name | None = None


class LoadLoraAdapterRequest(Strict):
    """vLLM's body for /v1/load_lora_adapter; `lora_path` is a tunekit run folder on the server."""

    lora_name: Name = Field(description="the model name clients will ask for")
    lora_path: Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_valid_unicode)]
    load_inplace: no_op((False,), "only false (a loaded name is unloaded first)", {"const": False}) = None


class UnloadLoraAdapterRequest(Strict):
    lora_name: Name
