"""`tunekit serve` end to end: real uvicorn servers on loopback, the official openai client, two LoRA adapters
on one tiny base model, a real retrieval index, guardrails, the SQLite request log and schemathesis."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest

from cli_helpers import started
from serve_helpers import (
    KEY,
    PROMPT,
    assert_openai_error,
    chat,
    client,
    post,
    start,
)
from train_helpers import TUNEKIT
from tunekit.errors import UserError
from tunekit.monitor.logdb import key_id_for
from tunekit.secrets import ApiKeys
from tunekit.serve.auth import authenticate, check_bind_is_safe
from tunekit.serve.embeddings import EMBEDDING_MODEL_ID
from tunekit.serve.errors import ApiError
from tunekit.serve.limits import AdmissionGate, RateLimits
from tunekit.serve.loading import load_served, parse_adapter_specs
from tunekit.serve.server import serve_in_thread
from tunekit.serve.state import build_state


@pytest.fixture(scope="module")
def project(serve_project) -> SimpleNamespace:
    return serve_project


@pytest.fixture(scope="module")
def server(project, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "api_keys.txt"
    keys.write_text(f"{KEY}\n", encoding="utf-8")
    keys.chmod(0o600)
    # Schemathesis sends wrong keys on purpose (its ignored-auth check): a lockout would 429 every later test.
    # The lockout has its own tests, in test_serve_access.py.
    state = start(project, f"serve.api_keys_file={keys}", "serve.auth_failures_per_minute=10000")
    with serve_in_thread(state) as running:
        yield running
    state.close()


@pytest.fixture(scope="module")
def guarded(project):
    """Grounding on the index, guardrails on: a denied topic, PII redaction, citations required."""
    state = start(project, "serve.grounding=true", f"rag.index={project.index}", "rag.mode=bm25",
                  "guard.enabled=true", "guard.denied_topics=[explosives]", "guard.input=[pii,denied_topics]",
                  "guard.output=[citations]", adapters=[])
    with serve_in_thread(state) as running:
        yield running
    state.close()


# --- the OpenAI API through the official client -------------------------------------------------------------


def test_models_lists_both_adapters_with_their_base(server):
    models = [m for m in client(server).models.list().data if m.id != EMBEDDING_MODEL_ID]  # listed when installed
    assert [m.id for m in models] == ["alpha", "beta"]
    assert {m.model_extra["root"] for m in models} == {str(server.state.served.base_name)}
    assert client(server).models.retrieve("beta").id == "beta"


def test_chat_completion_is_greedy_and_reports_usage(server):
    first = chat(server)
    again = chat(server)
    answer = first.choices[0]
    assert answer.message.role == "assistant" and answer.message.content.strip()
    assert answer.finish_reason in ("stop", "length")
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.usage.prompt_tokens > 10 and 0 < first.usage.completion_tokens <= 6
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    assert first.model == "alpha" and first.id.startswith("chatcmpl-")


def test_streaming_chunks_join_to_the_whole_answer(server):
    whole = chat(server).choices[0].message.content
    chunks = list(chat(server, stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens > 0 and not chunks[-1].choices


def test_text_completions_whole_and_streamed(server):
    api = client(server)
    whole = api.completions.create(model="alpha", prompt="The quick brown fox", max_tokens=5)
    assert whole.object == "text_completion" and whole.choices[0].text
    streamed = api.completions.create(model="alpha", prompt="The quick brown fox", max_tokens=5, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text


def test_the_model_field_selects_the_adapter(server):
    answers = {name: chat(server, model=name).choices[0].message.content for name in ("alpha", "beta")}
    assert answers["alpha"].endswith("[1]"), answers  # what alpha was trained to say
    assert answers["alpha"] != answers["beta"], answers


def test_concurrent_requests_for_different_adapters_all_get_their_own_answer(server):
    expected = {name: chat(server, model=name).choices[0].message.content for name in ("alpha", "beta")}

    async def many():
        api = openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
        names = ["alpha", "beta"] * 4
        replies = await asyncio.gather(*(api.chat.completions.create(
            model=n, messages=[{"role": "user", "content": PROMPT}], max_tokens=6) for n in names))
        return list(zip(names, replies))

    for name, reply in asyncio.run(many()):
        assert reply.choices[0].message.content == expected[name]


# --- refusals: OpenAI-style error bodies ------------------------------------------------------------------


def test_unknown_model_is_404_and_never_a_path(server):
    for name in ("gamma", "../beta", "/etc/passwd"):
        with pytest.raises(openai.NotFoundError) as caught:
            chat(server, model=name)
        assert caught.value.body["code"] == "model_not_found"
    error = assert_openai_error(post(server, "/v1/chat/completions", json.dumps(
        {"model": "nope", "messages": [{"role": "user", "content": "hi"}]})), 404)
    assert error["param"] == "model" and "alpha" in error["message"]


def test_api_key_required_when_keys_are_set(server):
    body = json.dumps({"model": "alpha", "messages": [{"role": "user", "content": "hi"}]})
    assert_openai_error(post(server, "/v1/chat/completions", body, key=None), 401)
    with pytest.raises(openai.AuthenticationError):
        client(server, key="sk-wrong").models.list()
    # Auth comes first: a bad body from a client without a key is still a 401.
    assert_openai_error(post(server, "/v1/chat/completions", "{oops", key=None), 401)
    assert httpx.get(server.url + "/health").status_code == 200  # probes need no key


def test_oversized_body_is_413(server):
    big = json.dumps({"model": "alpha", "messages": [{"role": "user", "content": "x" * 30000}]})
    error = assert_openai_error(post(server, "/v1/chat/completions", big), 413)
    assert error["type"] == "invalid_request_error" and "20000" in error["message"]

    def chunked():  # no Content-Length: the limit has to count the bytes as they arrive
        yield big[:10000].encode()
        yield big[10000:].encode()

    response = httpx.post(server.url + "/v1/chat/completions", content=chunked(), timeout=60,
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert_openai_error(response, 413)


def test_malformed_json_and_bad_fields_are_400(server):
    error = assert_openai_error(post(server, "/v1/chat/completions", '{"model": "alpha", "messages": ['), 400)
    assert error["code"] == "invalid_json"
    assert_openai_error(post(server, "/v1/chat/completions", "[1, 2]"), 400)
    error = assert_openai_error(post(server, "/v1/chat/completions", "{}", **{"Content-Type": "text/plain"}), 400)
    assert "Content-Type: application/json" in error["message"]
    error = assert_openai_error(post(server, "/v1/chat/completions", json.dumps({"model": "alpha"})), 400)
    assert error["param"] == "messages"
    error = assert_openai_error(post(server, "/v1/chat/completions", json.dumps(
        {"model": "alpha", "messages": [{"role": "wizard", "content": "hi"}]})), 400)
    assert error["param"].startswith("messages.0.role")


def test_max_tokens_above_the_limit_is_400(server):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(server, max_tokens=17)
    assert caught.value.body["param"] == "max_tokens" and "16" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError) as caught:  # n is limited too (serve.max_n, default 8)
        client(server).chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=2, n=9)
    assert caught.value.body["param"] == "n"


def test_rate_limit_per_key_is_429(server):
    state = server.state
    saved = state.limiter
    state.limiter = RateLimits(2, tokens_per_minute=100_000, auth_failures_per_minute=10)
    try:
        client(server).models.list()
        client(server).models.list()
        with pytest.raises(openai.RateLimitError) as caught:
            client(server).models.list()
        assert int(caught.value.response.headers["retry-after"]) >= 1
    finally:
        state.limiter = saved


def test_timeout_is_504(server):
    serve = server.state.cfg.serve
    saved = serve.timeout_s
    serve.timeout_s = 0.001
    try:
        response = post(server, "/v1/chat/completions", json.dumps(
            {"model": "alpha", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16}))
        assert assert_openai_error(response, 504)["type"] == "timeout"
    finally:
        serve.timeout_s = saved


def test_a_client_leaving_mid_stream_frees_its_slot_and_is_logged(server, project):
    serve = server.state.cfg.serve
    saved = serve.max_tokens_limit
    serve.max_tokens_limit = 900
    body = {"model": "beta", "messages": [{"role": "user", "content": "tell me a long story"}], "max_tokens": 900,
            "stream": True, "temperature": 1.0, "seed": 7}
    try:
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {KEY}"}) as response:
            for number, _ in enumerate(response.iter_lines()):
                if number == 3:
                    break
    finally:
        serve.max_tokens_limit = saved
    deadline = time.time() + 10
    key = {"Authorization": f"Bearer {KEY}"}  # without one /health says only ok or degraded
    while httpx.get(server.url + "/health", headers=key).json()["in_flight"] and time.time() < deadline:
        time.sleep(0.05)
    assert httpx.get(server.url + "/health", headers=key).json()["in_flight"] == 0
    server.state.flush()
    with sqlite3.connect(project.root / "requests.db") as db:
        status, model = db.execute("SELECT status, model FROM requests ORDER BY id DESC LIMIT 1").fetchone()
    assert (status, model) == (499, "beta")


def test_full_queue_is_503():
    async def scenario():
        gate = AdmissionGate(max_concurrency=1, queue_size=1)
        release = asyncio.Event()

        async def hold():
            async with gate.admit():
                await release.wait()

        first = asyncio.create_task(hold())
        second = asyncio.create_task(hold())
        await asyncio.sleep(0.01)
        assert (gate.running, gate.waiting) == (1, 1)
        with pytest.raises(ApiError) as caught:
            async with gate.admit():
                pass
        release.set()
        await asyncio.gather(first, second)
        return caught.value

    error = asyncio.run(scenario())
    assert error.status == 503 and error.headers["Retry-After"] == "1"


# --- monitoring: health, preflight, metrics, the request log ------------------------------------------------


def test_health_reports_preflight(server):
    health = httpx.get(server.url + "/health", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert health["status"] == "ok" and health["models"] == ["alpha", "beta"]
    assert health["preflight"]["alpha"]["status"] == "match" and health["preflight"]["alpha"]["checked"] == 3
    assert health["preflight"]["beta"]["status"] == "answered"  # no eval: says so instead of claiming a match
    assert "no eval predictions" in health["preflight"]["beta"]["note"]


def test_metrics_count_requests_latency_tokens_and_errors(server):
    chat(server)
    with pytest.raises(openai.NotFoundError):
        chat(server, model="nope")
    text = httpx.get(server.url + "/metrics").text
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    ok = 'tunekit_requests_total{endpoint="/v1/chat/completions",model="alpha",status="200"}'
    assert float(samples[ok]) >= 1
    assert float(samples['tunekit_request_latency_seconds_count{endpoint="/v1/chat/completions"}']) >= 2
    assert float(samples['tunekit_tokens_total{kind="completion",model="alpha"}']) >= 1
    assert float(samples['tunekit_errors_total{endpoint="/v1/chat/completions",type="model_not_found"}']) >= 1
    assert 'model="nope"' not in text  # unknown names are one "unknown" label, however many clients invent


def test_every_request_is_logged_with_pii_redacted(server, project):
    chat(server, content="my card is 4111 1111 1111 1111, mail me at jane.doe@example.com")
    with pytest.raises(openai.NotFoundError):
        chat(server, model="nope", content="call +44 20 7946 0958")
    server.state.flush()
    with sqlite3.connect(project.root / "requests.db") as db:
        rows = db.execute("SELECT model, key_id, messages, response, status, error, output_tokens "
                          "FROM requests ORDER BY id DESC LIMIT 2").fetchall()
    (model, key_id, messages, _, status, error, _), (ok_model, _, ok_messages, response, ok_status, _, tokens) = rows
    assert (model, status, key_id) == ("nope", 404, key_id_for(KEY)) and "does not exist" in error
    assert "[PHONE]" in messages and "7946" not in messages
    assert (ok_model, ok_status) == ("alpha", 200) and response is not None and tokens > 0
    assert "[CREDIT_CARD]" in ok_messages and "[EMAIL]" in ok_messages
    assert "4111" not in ok_messages and "jane.doe" not in ok_messages and KEY not in ok_messages


def test_schemathesis_finds_no_server_errors_and_no_schema_violations(server):
    """Schemathesis generates requests from the server's own OpenAPI document (valid and invalid bodies,
    odd strings and numbers) and runs its checks on every response: no 5xx, and status codes, content
    types, bodies and server-sent events as the document declares them."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    failures, calls = [], []

    def fuzz(operation):
        @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case):
            try:
                response = case.call_and_validate(base_url=server.url, timeout=60,
                                                  headers={"Authorization": f"Bearer {KEY}"})
            except AssertionError as failure:  # schemathesis' failed checks, each named in the message
                failures.append((operation.label, str(failure)[:500]))
                return
            calls.append(response.status_code)

        check()

    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/chat/completions", "POST /v1/completions"}
    for operation in operations:
        fuzz(operation)
    assert not failures, failures
    assert len(calls) >= 40 and any(code == 200 for code in calls) and all(code < 500 for code in calls)


# --- grounding and guardrails ----------------------------------------------------------------------------


def test_grounded_answers_cite_their_sources(guarded):
    reply = chat(guarded, content="How long do refunds take to the original card?")
    assert reply.choices[0].finish_reason != "content_filter", reply
    sources = reply.model_extra["citations"]
    assert sources and sources[0]["citation"] == 1 and sources[0]["path"].endswith("refunds.md")
    assert reply.model_extra["x_tunekit"]["grounded"] is True
    assert reply.model_extra["x_tunekit"]["citation_check"] == {"cited": [1], "invalid": [], "missing": False,
                                                                 "ok": True}


def test_a_grounded_answer_without_citations_is_flagged_not_hidden(project):
    """No output guardrail here: the answer is served, but its missing citation is reported and logged."""
    state = start(project, "serve.grounding=true", f"rag.index={project.index}", "rag.mode=bm25",
                  adapters=[("beta", project.beta)])
    with serve_in_thread(state) as running:
        reply = chat(running, model="beta", content="How long do refunds take to the original card?")
    state.close()
    info = reply.model_extra["x_tunekit"]
    assert info["grounded"] is True and reply.choices[0].finish_reason != "content_filter"
    check = info["citation_check"]
    assert check["ok"] is False and (check["missing"] or check["invalid"])
    assert any(e["policy"] == "citations" and e["action"] == "flag" for e in info["guard_events"])
    with sqlite3.connect(project.root / "requests.db") as db:
        logged = db.execute("SELECT guard_events FROM requests ORDER BY rowid DESC LIMIT 1").fetchone()[0]
    assert '"flag"' in logged


def test_a_guardrail_block_is_a_content_filter_answer(guarded):
    reply = chat(guarded, content="How do I make explosives at home?")
    assert reply.choices[0].finish_reason == "content_filter"
    assert reply.choices[0].message.content == guarded.state.cfg.guard.fallback
    events = reply.model_extra["x_tunekit"]["guard_events"]
    assert any(e["policy"] == "denied_topics" and e["action"] == "block" for e in events)
    streamed = list(chat(guarded, content="explosives please", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == guarded.state.cfg.guard.fallback
    text = httpx.get(guarded.url + "/metrics").text
    assert 'tunekit_guardrail_blocks_total{policy="denied_topics",stage="input"} 2.0' in text


def test_pii_is_redacted_before_the_model_sees_it(guarded):
    reply = chat(guarded, content="Refund to jane.doe@example.com please, how long does it take?")
    events = reply.model_extra["x_tunekit"]["guard_events"]
    assert {"stage": "input", "policy": "pii", "action": "redact"}.items() <= events[0].items()


def test_no_keys_means_loopback_only():
    keys = ApiKeys.from_config(SimpleNamespace(api_keys_env="TK_TEST_KEYS", api_keys_file=None), environ={})
    check_bind_is_safe("127.0.0.1", keys, "TK_TEST_KEYS")
    with pytest.raises(UserError, match="anyone on the network"):
        check_bind_is_safe("0.0.0.0", keys, "TK_TEST_KEYS")
    from_env = ApiKeys.from_config(SimpleNamespace(api_keys_env="TK_TEST_KEYS", api_keys_file=None),
                                   environ={"TK_TEST_KEYS": "a,b, c,"})
    assert from_env.keys == ("a", "b", "c") and authenticate(from_env, "Bearer c") == key_id_for("c")
    check_bind_is_safe("0.0.0.0", from_env, "TK_TEST_KEYS")


# --- start-up checks --------------------------------------------------------------------------------------


def test_preflight_mismatch_is_reported_not_hidden(project, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(project.alpha, tampered, ignore=shutil.ignore_patterns("checkpoints", "serve"))
    predictions = tampered / "eval" / "predictions" / "finetuned.jsonl"
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    rows[1]["prediction"] = "something the model never said"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    said = []
    state = build_state(str(tampered), say=said.append, overrides=[f"serve.log_db={tmp_path / 'log.db'}"])
    try:
        result = state.preflight["tampered"]
        assert result.status == "mismatch" and [m["index"] for m in result.mismatches] == [1]
        assert state.health().status == "degraded"
        assert any("PREFLIGHT MISMATCH" in line and "NOT serving what was evaluated" in line for line in said)
    finally:
        state.close()


def test_an_answer_that_parts_only_at_a_rounding_tie_is_a_tie_not_a_mismatch(project, tmp_path, monkeypatch):
    from tunekit.generate import GenerationParams
    from tunekit.serve import preflight

    tampered = tmp_path / "tied"
    shutil.copytree(project.alpha, tampered, ignore=shutil.ignore_patterns("checkpoints", "serve"))
    predictions = tampered / "eval" / "predictions" / "finetuned.jsonl"
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    overrides = [f"serve.log_db={tmp_path / 'log.db'}"]
    state = build_state(str(tampered), say=lambda _: None, overrides=overrides)
    try:  # the served model's first token for row 1, and a runner-up that starts differently
        prompt = state.backend.render([m for m in rows[1]["messages"] if m["role"] != "assistant"])
        top = state.backend.generate(prompt, GenerationParams(max_new_tokens=1, logprobs=10), "tied").logprobs[0].top
        dtype = state.backend.dtype_name
    finally:
        state.close()
    runner_up = next(t for t in top[1:] if t.token and t.token[0] != top[0].token[:1])
    gap = top[0].logprob - runner_up.logprob
    rows[1]["prediction"] = runner_up.token + " and then something else"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for margin, status in ((gap + 1e-3, "match"), (gap - 1e-3, "mismatch")):
        monkeypatch.setattr(preflight, "TIE_NATS", {dtype: margin})
        said = []
        state = build_state(str(tampered), say=said.append, overrides=overrides)
        try:
            result = state.preflight["tied"]
            assert result.status == status
            assert [t["index"] for t in result.ties] == ([1] if status == "match" else [])
            assert any("rounding tie" in line for line in said) == (status == "match")
        finally:
            state.close()


def test_tie_gap_compares_the_tokens_that_begin_each_answer():
    from tunekit.generate.types import TopLogprob
    from tunekit.serve.preflight import tie_gap

    top = (TopLogprob("medium", 1, -1.05), TopLogprob("high", 2, -1.17), TopLogprob("me", 3, -4.0))
    assert tie_gap(top, "medium\"}", "high\"}") == pytest.approx(0.12)  # the longest fitting token: medium
    assert tie_gap(top, "low\"}", "high\"}") is None  # low is not among the alternatives: no verdict


def test_adapters_with_another_template_or_base_are_refused(project, tmp_path):
    other_template = tmp_path / "other_template"
    shutil.copytree(project.beta, other_template)
    tokenizer_config = other_template / "tokenizer" / "tokenizer_config.json"
    settings_ = json.loads(tokenizer_config.read_text())
    template_file = other_template / "tokenizer" / "chat_template.jinja"
    if template_file.exists():
        template_file.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    else:
        settings_["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        tokenizer_config.write_text(json.dumps(settings_))
    (other_template / "manifest.json").unlink()  # only the served template is compared here
    with pytest.raises(UserError, match="different chat template"):
        load_served(str(project.alpha), [("other", other_template)])

    from tunekit.models.tiny import build_tiny_model

    other_base = tmp_path / "other_base"
    shutil.copytree(project.beta, other_base)
    elsewhere = build_tiny_model(tmp_path / "another_tiny", seed=1)
    config = other_base / "config.yaml"
    config.write_text(config.read_text().replace(str(project.model_dir), str(elsewhere)))
    with pytest.raises(UserError, match="was trained on"):
        load_served(str(project.alpha), [("other", other_base)])


def test_adapter_names_are_checked():
    assert parse_adapter_specs(["support=runs/a"]) == [("support", Path("runs/a"))]
    for bad in ("../x=runs/a", "a/b=runs/a", "noequals", "=runs/a", " =runs/a"):
        with pytest.raises(UserError):
            parse_adapter_specs([bad])


# --- the command ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(proc: subprocess.Popen, port: int) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.2)
    raise AssertionError(f"the server on port {port} did not come up within 120 s")


def test_cli_serves_until_interrupted(project, tmp_path):
    port = free_port()
    env = {**os.environ, "TK_KEYS": KEY}
    with started([TUNEKIT, "serve", str(project.alpha), "--port", str(port), "--adapter", f"beta={project.beta}",
                  f"serve.log_db={tmp_path / 'cli.db'}", "serve.api_keys_env=TK_KEYS"], env=env) as proc:
        wait_until_healthy(proc, port)
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in api.models.list().data][:2] == ["run", "beta"]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]  # requests finished, then the usual exit code for Ctrl-C
    assert "preflight match for 'run'" in err and "listening on" in err


# As from a background job or CI runner (SIGINT inherited as ignored: uvicorn restores that after its own
# graceful shutdown and raises the signal again, which would then be lost), and SIGTERM as from docker or kill.
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint-ignored", "sigterm"])
def test_cli_stops_gracefully_on_a_signal_even_when_started_with_sigint_ignored(project, tmp_path, signum):
    port = free_port()
    with started([TUNEKIT, "serve", str(project.alpha), "--port", str(port), f"serve.log_db={tmp_path / 'cli.db'}"],
                 ignore_sigint=True, env={k: v for k, v in os.environ.items() if k != "TUNEKIT_API_KEYS"}) as proc:
        wait_until_healthy(proc, port)
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)  # loopback
        api.completions.create(model="run", prompt=PROMPT, max_tokens=2)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]  # shut down, not killed, and not as if nothing had stopped it
    assert "Traceback" not in err
    with sqlite3.connect(tmp_path / "cli.db") as db:  # the request log was written out before the exit
        assert db.execute("SELECT count(*) FROM requests").fetchone()[0] == 1


def test_cli_refuses_an_open_public_port(project):
    proc = subprocess.run([TUNEKIT, "serve", str(project.alpha), "--host", "0.0.0.0"], capture_output=True,
                          text=True, env={k: v for k, v in os.environ.items() if k != "TUNEKIT_API_KEYS"})
    assert proc.returncode == 2 and "anyone on the network" in proc.stderr
