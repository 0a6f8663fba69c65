"""Adapters loaded and unloaded while serving (vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter):
behind admin keys of their own, checked before any weight is read, answering exactly as if served from the
start, and never failing the requests of other adapters. Real uvicorn servers on loopback, real HTTP."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
import torch

from serve_helpers import KEY, PROMPT, assert_openai_error, chat, client, post, running
from tunekit.errors import ConfigError
from tunekit.generate import GenerationParams, Generator
from tunekit.serve.embeddings import EMBEDDING_MODEL_ID

ADMIN_KEY = "sk-admin-test-789"
LOAD, UNLOAD = "/v1/load_lora_adapter", "/v1/unload_lora_adapter"


@contextmanager
def serving(project, tmp_path: Path, *overrides: str, adapters=(), admin_keys: str | None = ADMIN_KEY,
            target: str | None = None) -> Iterator:
    """A server with $TUNEKIT_API_KEYS (and $TUNEKIT_ADMIN_KEYS) set while it starts: alpha alone by default."""
    # The module's tests share one key on one server for minutes: with the default 120 requests a minute, a
    # fast machine's later tests met 429s (rate limits have their own tests in test_serve_access.py).
    settings = [f"serve.log_db={tmp_path / 'requests.db'}", "serve.rate_limit_per_minute=100000", *overrides]
    with running(project, *settings, env={"TUNEKIT_API_KEYS": KEY, "TUNEKIT_ADMIN_KEYS": admin_keys or None},
                 adapters=list(adapters), target=target) as server:
        yield server


@pytest.fixture(scope="module")
def admin_server(serve_project, tmp_path_factory):
    """alpha alone, admin keys set; X-Forwarded-For trusted from loopback so that the wrong-key tests lock out
    addresses of their own, not the tests' loopback one."""
    with serving(serve_project, tmp_path_factory.mktemp("admin"), "serve.auth_failures_per_minute=3",
                 "serve.trusted_proxies=[127.0.0.1]") as server:
        yield server


@pytest.fixture(scope="module")
def reference(serve_project, tmp_path_factory):
    """alpha and beta from the start, no admin keys: what a runtime-loaded beta must answer."""
    with serving(serve_project, tmp_path_factory.mktemp("reference"), adapters=[("beta", serve_project.beta)],
                 admin_keys=None) as server:
        yield server


def admin(server, path: str, body: dict | str, key: str | None = ADMIN_KEY,
          forwarded_for: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return post(server, path, body if isinstance(body, str) else json.dumps(body), key=key, **headers)


def load(server, name: str, run: Path | str) -> httpx.Response:
    return admin(server, LOAD, {"lora_name": name, "lora_path": str(run)})


def answer(server, model: str) -> str:
    return chat(server, model=model).choices[0].message.content


def models(server, key: str, forwarded_for: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": forwarded_for}
    return httpx.get(server.url + "/v1/models", headers=headers, timeout=60)


def served_ids(server) -> list[str]:
    """The generating models /v1/models lists (the embedding model, listed when installed, is none of them)."""
    return [m.id for m in client(server).models.list().data if m.id != EMBEDDING_MODEL_ID]


# --- loading and unloading --------------------------------------------------------------------------------


def test_an_adapter_loaded_while_serving_answers_as_served_from_the_start(admin_server, reference, serve_project):
    expected = answer(reference, "beta")
    alpha = answer(admin_server, "alpha")
    assert expected != alpha  # beta's random LoRA changes the answer: a runtime load is visible

    loaded = load(admin_server, "beta-live", serve_project.beta)
    assert loaded.status_code == 200, loaded.text
    body = loaded.json()
    assert body["status"] == "loaded" and body["models"] == ["alpha", "beta-live"]
    assert body["preflight"]["status"] == "answered"  # beta has no eval: its validation prompts were answered
    assert served_ids(admin_server) == ["alpha", "beta-live"]
    card = client(admin_server).models.retrieve("beta-live")
    assert card.model_extra["parent"] == admin_server.state.served.base_name
    assert answer(admin_server, "beta-live") == expected
    health = httpx.get(admin_server.url + "/health", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert health["models"] == ["alpha", "beta-live"] and "beta-live" in health["preflight"]

    unloaded = admin(admin_server, UNLOAD, {"lora_name": "beta-live"})
    assert unloaded.status_code == 200, unloaded.text
    assert unloaded.json() == {"object": "lora_adapter", "lora_name": "beta-live", "status": "unloaded",
                               "models": ["alpha"]}
    with pytest.raises(openai.NotFoundError):
        answer(admin_server, "beta-live")
    assert served_ids(admin_server) == ["alpha"] and answer(admin_server, "alpha") == alpha
    assert "beta-live" not in admin_server.state.backend.generator.model.peft_config  # the weights are gone


def test_chat_on_alpha_goes_on_while_beta_is_loaded_and_unloaded(admin_server, reference, serve_project):
    expected = {"alpha": answer(admin_server, "alpha"), "beta-live": answer(reference, "beta")}
    stop, errors, alpha_answers, beta_answers = threading.Event(), [], [], []

    def keep_asking(model: str, answers: list) -> None:
        while not stop.is_set():
            try:
                answers.append(answer(admin_server, model))
            except openai.NotFoundError:
                if model == "alpha":
                    raise
                time.sleep(0.01)  # beta-live is not served right now: the expected answer
            except Exception as exc:
                errors.append(repr(exc))

    with ThreadPoolExecutor(5) as pool:
        clients = [pool.submit(keep_asking, "alpha", alpha_answers) for _ in range(3)]
        clients += [pool.submit(keep_asking, "beta-live", beta_answers) for _ in range(2)]
        try:
            for _ in range(3):
                assert load(admin_server, "beta-live", serve_project.beta).status_code == 200
                time.sleep(0.3)
                assert admin(admin_server, UNLOAD, {"lora_name": "beta-live"}).status_code == 200
                time.sleep(0.1)
        finally:
            stop.set()
        for future in clients:
            future.result()
    assert errors == []
    assert len(alpha_answers) >= 6 and set(alpha_answers) == {expected["alpha"]}
    assert beta_answers and set(beta_answers) == {expected["beta-live"]}


def test_unloading_waits_for_the_adapters_requests_in_flight(admin_server, serve_project):
    assert load(admin_server, "beta-wait", serve_project.beta).status_code == 200
    backend, replies = admin_server.state.backend, []
    prompt = backend.render([{"role": "user", "content": PROMPT}])
    unloading = threading.Thread(target=lambda: replies.append(admin(admin_server, UNLOAD, {"lora_name": "beta-wait"})))
    with backend.generator.decoding("alpha"):  # holding the generator's lock: nothing decodes until this ends
        in_flight = backend.stream(prompt, GenerationParams(max_new_tokens=4), "beta-wait")
        with pytest.raises(FutureTimeout):
            backend.unload_adapter("beta-wait", timeout=0.3)
        assert "beta-wait" in backend.generator.model.peft_config  # kept: a request for it is in flight
        unloading.start()
        deadline = time.monotonic() + 30
        while "beta-wait" in admin_server.state.served.adapters and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(openai.NotFoundError):  # no longer offered, while its request still runs
            answer(admin_server, "beta-wait")
        unloading.join(0.3)
        assert unloading.is_alive() and "beta-wait" in backend.generator.model.peft_config
    unloading.join(60)
    assert replies and replies[0].status_code == 200, replies
    assert in_flight.result(30).completion_tokens > 0  # it finished on its adapter, which was deleted after
    assert "beta-wait" not in backend.generator.model.peft_config


# --- refusals ---------------------------------------------------------------------------------------------


def test_bad_loads_and_unloads_are_refused_with_the_reason(admin_server, serve_project, tmp_path):
    error = assert_openai_error(load(admin_server, "../x", serve_project.beta), 400)
    assert error["param"] == "lora_name" and "not allowed" in error["message"]
    error = assert_openai_error(load(admin_server, "gamma", tmp_path), 400)
    assert error["param"] == "lora_path" and "not a finished tunekit run" in error["message"]
    assert_openai_error(load(admin_server, "gamma", "bad\u0000path"), 400)
    assert assert_openai_error(load(admin_server, "alpha", serve_project.beta), 409)["code"] == "adapter_exists"
    assert_openai_error(admin(admin_server, LOAD, {"lora_name": "gamma"}), 400)  # no lora_path
    assert_openai_error(admin(admin_server, LOAD, "{oops"), 400)

    other_template = tmp_path / "other_template"
    shutil.copytree(serve_project.beta, other_template)
    for path in (other_template / "tokenizer").glob("chat_template.jinja"):
        path.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    settings = json.loads((other_template / "tokenizer" / "tokenizer_config.json").read_text())
    if "chat_template" in settings:
        settings["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        (other_template / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(settings))
    (other_template / "manifest.json").unlink()  # only the served template is compared here
    error = assert_openai_error(load(admin_server, "gamma", other_template), 400)
    assert "different chat template" in error["message"]

    damaged = tmp_path / "damaged"
    shutil.copytree(serve_project.beta, damaged)
    for weights in (damaged / "adapter").glob("adapter_model.*"):
        weights.write_bytes(b"not a tensor file")
    error = assert_openai_error(load(admin_server, "gamma", damaged), 400)
    assert "could not be loaded" in error["message"]
    assert "gamma" not in admin_server.state.backend.generator.model.peft_config  # nothing half-loaded is left

    error = assert_openai_error(admin(admin_server, UNLOAD, {"lora_name": "nope"}), 404)
    assert error["code"] == "model_not_found" and "alpha" in error["message"]
    assert assert_openai_error(admin(admin_server, UNLOAD, {"lora_name": "alpha"}), 409)["code"] == "last_adapter"
    assert served_ids(admin_server) == ["alpha"] and answer(admin_server, "alpha")


def test_admin_routes_take_admin_keys_and_the_api_takes_api_keys(admin_server):
    body = {"lora_name": "gamma", "lora_path": "anywhere"}
    for key in (KEY, None, "sk-wrong"):  # the API key is no admin key
        error = assert_openai_error(admin(admin_server, LOAD, body, key=key, forwarded_for="198.51.100.1"), 401)
        assert error["code"] == "invalid_api_key" and "admin key" in error["message"]
    api = openai.OpenAI(base_url=admin_server.base_url, api_key=ADMIN_KEY, max_retries=0, timeout=60,
                        default_headers={"X-Forwarded-For": "198.51.100.2"})  # its own lockout budget
    with pytest.raises(openai.AuthenticationError):
        api.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        api.models.list()


def test_failed_admin_keys_count_toward_the_lockout(admin_server):
    body = {"lora_name": "alpha"}
    address = "203.0.113.5"
    for key in (KEY, "sk-guess"):
        assert_openai_error(admin(admin_server, UNLOAD, body, key=key, forwarded_for=address), 401)
    assert_openai_error(models(admin_server, "sk-guess-2", address), 401)
    # Three failures, on both kinds of route: the address is locked out of both, even with the right keys.
    assert_openai_error(admin(admin_server, UNLOAD, body, forwarded_for=address), 429)
    assert_openai_error(models(admin_server, KEY, address), 429)
    assert admin(admin_server, UNLOAD, body).status_code == 409  # another address: still heard


def test_admin_routes_are_off_without_admin_keys(reference, serve_project):
    body = {"lora_name": "gamma", "lora_path": str(serve_project.beta)}
    for key in (KEY, ADMIN_KEY, None):
        error = assert_openai_error(admin(reference, LOAD, body, key=key), 403)
        assert "TUNEKIT_ADMIN_KEYS" in error["message"] and error["code"] == "admin_disabled"
    assert served_ids(reference) == ["alpha", "beta"]


def test_a_server_started_without_adapters_cannot_load_one(serve_project, tmp_path):
    with serving(serve_project, tmp_path, "serve.preflight_prompts=0", target=str(serve_project.model_dir)) as server:
        error = assert_openai_error(load(server, "beta", serve_project.beta), 409)
        assert error["code"] == "no_adapters" and "at least one adapter" in error["message"]


def test_an_admin_key_that_is_also_an_api_key_is_refused_at_start(serve_project, tmp_path):
    with pytest.raises(ConfigError, match="also an API key"), serving(serve_project, tmp_path, admin_keys=KEY):
        pass


# --- the generator underneath ------------------------------------------------------------------------------


def peft_model(project, *names: str):
    """alpha's adapter on the tiny base in fp32, and beta's under each of `names`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(project.model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(project.alpha / "adapter"), adapter_name="alpha")
    for name in names:
        model.load_adapter(str(project.beta / "adapter"), adapter_name=name)
    return model.eval()


def test_an_adapter_loaded_into_a_dtype_copy_is_converted_and_answers_as_loaded_at_start(serve_project):
    """The generator decodes a bf16 copy of the fp32 model: the adapter must go into the copy, in bf16."""
    from tunekit.runfolder import RunFolder

    tokenizer = RunFolder(serve_project.alpha).tokenizer()

    def peft(*names: str):
        return peft_model(serve_project, *names)

    params = GenerationParams(max_new_tokens=8)
    prompt = [{"role": "user", "content": PROMPT}]
    from_start = Generator(peft("beta"), tokenizer, dtype="bf16").generate([prompt], params, "beta")[0].text
    caller_model = peft()
    live = Generator(caller_model, tokenizer, dtype="bf16")
    live.load_adapter("beta", serve_project.beta / "adapter")
    added = [p for n, p in live.model.named_parameters() if ".beta." in n]
    assert added and all(p.dtype == torch.bfloat16 and not p.requires_grad for p in added)
    assert "beta" not in caller_model.peft_config  # the copy got it, not the caller's fp32 model
    assert live.generate([prompt], params, "beta")[0].text == from_start
    live.unload_adapter("beta")
    assert live.resolve_adapter(None) == "alpha" and list(live.model.peft_config) == ["alpha"]


def test_unloading_an_adapter_never_fails_the_batch_it_shared(serve_project):
    """A mixed batch started by a beta row goes on with alpha rows after that row finished and beta was
    deleted: the next step must run with an adapter a row still uses, not the one the batch started with."""
    from tunekit.generate import BatchScheduler
    from tunekit.runfolder import RunFolder

    generator = Generator(peft_model(serve_project, "beta"), RunFolder(serve_project.alpha).tokenizer(), dtype="fp32")
    with BatchScheduler(generator) as scheduler:
        with generator.decoding("alpha"):  # both join the first step: the shorter beta prompt is admitted first
            short = scheduler.submit("Hi", GenerationParams(max_new_tokens=1), "beta")
            long = scheduler.submit(PROMPT * 3, GenerationParams(max_new_tokens=8), "alpha")
            retiring = threading.Thread(target=scheduler.retire_adapter, args=("beta", 30))
            retiring.start()
            retiring.join(0.3)  # time to ask; it waits, as beta's request is queued
            assert retiring.is_alive()
        retiring.join(30)
        assert short.result(30).completion_tokens == 1
        assert long.result(30).completion_tokens > 1  # not failed by the deletion
    assert list(generator.model.peft_config) == ["alpha"]
