"""Who may use the server, and how much: keys from the environment or a key file (never the config), limits
on requests and tokens per key, a lockout for addresses that guess keys, X-Forwarded-For only from trusted
proxies, and a /health that tells strangers no more than ok. Real uvicorn servers on loopback throughout."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from cli_helpers import run_in_process
from serve_helpers import KEY, assert_openai_error, client, post, running, write_project
from train_helpers import color_rows
from tunekit.config import load_config
from tunekit.config_stages import ServeConfig
from tunekit.errors import ConfigError
from tunekit.monitor.logdb import key_id_for
from tunekit.secrets import ApiKeys
from tunekit.serve.auth import authenticate
from tunekit.serve.server import serve_in_thread
from tunekit.serve.state import build_state

OTHER_KEY = "sk-test-other-456"
FULL_HEALTH = {"status", "models", "preflight", "in_flight", "queued"}


def key_file(folder: Path, *lines: str, mode: int = 0o600) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "api_keys.txt"
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    path.chmod(mode)
    return path


@contextmanager
def serving(project, tmp_path: Path, *overrides: str) -> Iterator:
    """alpha alone, no preflight (these tests are about access, not answers), its own request log."""
    with running(project, f"serve.log_db={tmp_path / 'requests.db'}", "serve.preflight_prompts=0", *overrides,
                 env={}, adapters=[]) as server:
        yield server


def models(server, key: str | None = KEY, forwarded_for: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    return httpx.get(server.url + "/v1/models", headers=headers, timeout=60)


def assert_throttled(response: httpx.Response) -> dict:
    error = assert_openai_error(response, 429)
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    return error


# --- rate limits ------------------------------------------------------------------------------------------


def test_requests_per_minute_are_counted_per_key(serve_project, tmp_path):
    keys = key_file(tmp_path, KEY, OTHER_KEY)
    with serving(serve_project, tmp_path, f"serve.api_keys_file={keys}", "serve.rate_limit_per_minute=3") as server:
        assert [models(server).status_code for _ in range(3)] == [200, 200, 200]
        error = assert_throttled(models(server))
        assert "3 requests per minute" in error["message"]
        with pytest.raises(openai.RateLimitError):
            client(server).models.list()
        assert models(server, key=OTHER_KEY).status_code == 200  # another key, another budget


def test_tokens_per_minute_are_charged_before_generation(serve_project, tmp_path):
    keys = key_file(tmp_path, KEY)
    with serving(serve_project, tmp_path, f"serve.api_keys_file={keys}", "serve.tokens_per_minute=100") as server:
        def complete(max_tokens: int) -> httpx.Response:
            return post(server, "/v1/completions", f'{{"model": "alpha", "prompt": "hi", "max_tokens": {max_tokens}}}')

        # Each is charged max_tokens 16 plus 1 for "hi" (2 characters at 4 a token): 17.
        assert [complete(16).status_code for _ in range(5)] == [200] * 5  # 85 of 100
        error = assert_throttled(complete(16))  # 102 would be over
        assert "100 tokens per minute" in error["message"] and "charged 17" in error["message"]
        assert complete(2).status_code == 200  # 88: the refused charge did not count
        assert_throttled(complete(12))  # 101
        assert models(server).status_code == 200  # only generation costs tokens


def test_wrong_keys_lock_the_address_out_before_its_key_is_checked(serve_project, tmp_path):
    keys = key_file(tmp_path, KEY)
    with serving(serve_project, tmp_path, f"serve.api_keys_file={keys}", "serve.auth_failures_per_minute=3",
                 "serve.trusted_proxies=[127.0.0.1]") as server:
        for guess in ("sk-guess-1", "sk-guess-2", None):  # a missing key counts as a wrong one
            assert assert_openai_error(models(server, key=guess), 401)["code"] == "invalid_api_key"
        error = assert_throttled(models(server, key="sk-guess-3"))
        assert "wrong or missing API keys" in error["message"]
        assert_throttled(models(server))  # the right key too: it is not even compared
        assert_throttled(httpx.get(server.url + "/health", headers={"Authorization": f"Bearer {KEY}"}))
        assert httpx.get(server.url + "/health").json() == {"status": "ok"}  # probes without a key still work
        # Locked out is the address (here the one a trusted proxy names), not everyone.
        assert models(server, forwarded_for="203.0.113.9").status_code == 200


def test_forwarded_for_names_the_client_only_from_a_trusted_proxy(serve_project, tmp_path):
    overrides = ("serve.rate_limit_per_minute=3",)  # no keys: one budget per client address
    with serving(serve_project, tmp_path, *overrides) as server:
        # A fresh X-Forwarded-For per request must not be a fresh budget: loopback is no proxy here.
        answers = [models(server, key=None, forwarded_for=f"198.51.100.{n}").status_code for n in range(4)]
        assert answers == [200, 200, 200, 429]
    with serving(serve_project, tmp_path, *overrides, "serve.trusted_proxies=[127.0.0.0/8]") as server:
        answers = [models(server, key=None, forwarded_for=f"198.51.100.{n}").status_code for n in range(4)]
        assert answers == [200] * 4  # four clients behind the proxy, one request each
        # The proxy appends the address it saw; what the client wrote before that is not trusted.
        same = [models(server, key=None, forwarded_for=f"6.6.6.{n}, 203.0.113.5").status_code for n in range(4)]
        assert same == [200, 200, 200, 429]


def test_trusted_proxies_must_be_addresses():
    assert ServeConfig(trusted_proxies=["10.1.2.3/8", "::1"]).trusted_proxies == ["10.0.0.0/8", "::1"]
    with pytest.raises(ValueError, match="is not an IP address or network"):
        ServeConfig(trusted_proxies=["proxy.internal"])


# --- /health ----------------------------------------------------------------------------------------------


def test_health_tells_only_the_status_without_a_key(serve_project, tmp_path):
    keys = key_file(tmp_path, KEY)
    with serving(serve_project, tmp_path, f"serve.api_keys_file={keys}") as server:
        assert httpx.get(server.url + "/health").json() == {"status": "ok"}
        full = httpx.get(server.url + "/health", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert set(full) == FULL_HEALTH and full["models"] == ["alpha"] and full["in_flight"] == 0
        wrong = httpx.get(server.url + "/health", headers={"Authorization": "Bearer sk-nope"})
        assert_openai_error(wrong, 401)  # a key sent to /health is checked (and counted) like any other
    with serving(serve_project, tmp_path) as server:  # no keys, loopback only: nothing to hide
        assert set(httpx.get(server.url + "/health").json()) == FULL_HEALTH


# --- where keys come from ---------------------------------------------------------------------------------


def test_api_keys_in_a_config_are_refused_without_repeating_them(tmp_path, monkeypatch, capsys):
    secret = "sk-live-" + secrets.token_hex(8)
    with pytest.raises(ConfigError) as caught:
        load_config(None, [f"serve.api_keys=[{secret}]"])
    message = str(caught.value)
    assert "serve.api_keys" in message and "TUNEKIT_API_KEYS" in message and "serve.api_keys_file" in message
    assert secret not in message
    config = tmp_path / "tunekit.yaml"
    config.write_text(yaml.safe_dump({"serve": {"api_keys": [secret]}}), encoding="utf-8")
    code, output = run_in_process(monkeypatch, capsys, "serve", tmp_path / "run", "--config", config)
    assert code == 2 and "serve.api_keys" in output and secret not in output and "Traceback" not in output
    # Runs saved by older versions hold `api_keys: []`: nothing was set, so they still load.
    config.write_text(yaml.safe_dump({"serve": {"api_keys": [], "port": 9000}}), encoding="utf-8")
    assert load_config(config).serve.port == 9000


def test_key_file_format_and_permissions(tmp_path, monkeypatch, capsys):
    path = key_file(tmp_path / "ok", "# production keys", "", "  sk-one  ", "# sk-retired", "sk-two")
    keys = ApiKeys.from_config(ServeConfig(api_keys_file="api_keys.txt", api_keys_env="TK_KEYS"),
                               base_dir=tmp_path / "ok", environ={"TK_KEYS": "sk-env"})
    assert keys.keys == ("sk-env", "sk-one", "sk-two") and keys.sources == ("$TK_KEYS", str(path))
    assert keys.notes == () and authenticate(keys, "Bearer sk-two") == key_id_for("sk-two")

    def refusal(*lines: str, mode: int = 0o600) -> str:
        folder = tmp_path / secrets.token_hex(4)
        key_file(folder, *lines, mode=mode)
        with pytest.raises(ConfigError) as caught:
            ApiKeys.from_config(ServeConfig(api_keys_file="api_keys.txt"), base_dir=folder, environ={})
        return str(caught.value)

    assert "written by group or others" in refusal("sk-one", mode=0o620)
    assert "chmod 600" in refusal("sk-one", mode=0o602)
    assert "holds no keys" in refusal("# none yet", "")
    message = refusal("sk-one  # ops team")
    assert "line 1" in message and "space inside a key" in message and "sk-one" not in message
    with pytest.raises(ConfigError, match="is not a file"):
        ApiKeys.from_config(ServeConfig(api_keys_file="missing.txt"), base_dir=tmp_path, environ={})
    # Readable by others is served with a warning: container secret mounts are world-readable by default.
    readable = key_file(tmp_path / "mounted", "sk-one", mode=0o644)
    keys = ApiKeys.from_config(ServeConfig(api_keys_file=str(readable)), environ={})
    assert keys.required and "readable by group or others" in keys.notes[0]
    # `tunekit serve` refuses a writable key file at once, before any model loads.
    writable = key_file(tmp_path / "writable", "sk-one", mode=0o666)
    code, output = run_in_process(monkeypatch, capsys, "serve", tmp_path / "no-run", f"serve.api_keys_file={writable}")
    assert code == 2 and "written by group or others" in output and "Traceback" not in output


def test_no_file_a_run_eval_or_server_writes_holds_a_key(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """Keys in the environment and in a key file; a wrong key sent too. Then every byte that training, eval,
    the risk card and serving wrote (run folder, serve folder, request log, tunekit home) and printed."""
    env_key, file_key, wrong_key = (f"sk-{kind}-{secrets.token_hex(12)}" for kind in ("env", "file", "wrong"))
    monkeypatch.setenv("TUNEKIT_API_KEYS", env_key)
    keys = key_file(tmp_path / "secrets", file_key)
    root = tmp_path / "project"
    config = write_project(root, tiny_model_dir, color_rows(40), steps=4,
                           extra="eval:\n  candidates: [finetuned]\n  max_new_tokens: 4\n  max_samples: 2\n"
                                 f"serve:\n  api_keys_file: {keys}\n")
    monkeypatch.chdir(root)
    printed = []
    for command in (["train", config], ["eval", config], ["risk", root / "run"]):
        code, output = run_in_process(monkeypatch, capsys, *command)
        assert code in (0, 1), output[-3000:]  # risk fails its checklist (no owner): still a card
        printed.append(output)
    run = root / "run"
    assert "bearer keys from $TUNEKIT_API_KEYS and" in (run / "model_card.md").read_text()

    state = build_state(str(run), say=printed.append)
    try:
        with serve_in_thread(state) as server:
            answer = client(server, key=env_key).chat.completions.create(
                model="run", messages=[{"role": "user", "content": "paint item 3"}], max_tokens=3)
            assert answer.choices[0].message.content is not None
            streamed = client(server, key=file_key).completions.create(model="run", prompt="paint", max_tokens=3,
                                                                      stream=True)
            assert list(streamed)
            with pytest.raises(openai.AuthenticationError):
                client(server, key=wrong_key).models.list()
            assert httpx.get(server.url + "/health", headers={"Authorization": f"Bearer {env_key}"}).status_code == 200
    finally:
        state.close()
    printed.append(capsys.readouterr().err)

    request_log = run / "serve" / "requests.db"
    with sqlite3.connect(request_log) as db:
        logged = {row[0] for row in db.execute("SELECT key_id FROM requests")}
    assert {key_id_for(env_key), key_id_for(file_key)} <= logged  # the requests were logged, by key id
    from tunekit.io import tunekit_home

    written = [p for folder in (root, tunekit_home()) for p in folder.rglob("*") if p.is_file()]
    assert request_log in written and run / "config.yaml" in written and len(written) > 20
    for key in (env_key, file_key, wrong_key):
        holders = [str(p) for p in written if key.encode() in p.read_bytes()]
        assert holders == [], f"{key[:7]}... written to {holders}"
        assert not any(key in text for text in printed)
