"""tunekit serve in front of another engine (serve.engine_url; serve.engine=vllm starts vLLM and does the same):
the engine decodes, this server keeps its keys, guardrails, grounding and request log. The engine here is
tunekit's own server on loopback, an OpenAI-compatible server as vLLM's is; real servers, real HTTP, the
official client. vLLM itself needs a CUDA GPU: its command is checked, and its refusal on this machine."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from serve_helpers import KEY, PROMPT, assert_openai_error, chat, client, post, running, start
from train_helpers import tunekit
from tunekit.errors import UserError

ENGINE_KEY = "sk-engine-456"


@contextmanager
def running_fast(project, *overrides: str, env: dict[str, str | None], adapters=None) -> Iterator:
    """`running`, without the per-key rate limit: these tests share keys across servers for a while."""
    with running(project, "serve.rate_limit_per_minute=100000", *overrides, env=env, adapters=adapters) as server:
        yield server


@pytest.fixture(scope="module")
def engine(serve_project, tmp_path_factory):
    """alpha and beta decoded by tunekit's engine, behind a key of its own, no guardrails."""
    log = tmp_path_factory.mktemp("engine") / "engine.db"
    with running_fast(serve_project, f"serve.log_db={log}", env={"TUNEKIT_API_KEYS": ENGINE_KEY}) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(serve_project, engine, tmp_path_factory):
    """The same runs served through `engine`, with guardrails (a denied topic) and grounding on the index."""
    log = tmp_path_factory.mktemp("gateway") / "gateway.db"
    with running_fast(serve_project, f"serve.log_db={log}", f"serve.engine_url={engine.base_url}",
                 "guard.enabled=true", "guard.denied_topics=[explosives]", "guard.input=[denied_topics]",
                 env={"TUNEKIT_API_KEYS": KEY, "TUNEKIT_ENGINE_API_KEY": ENGINE_KEY}) as server:
        yield server


def engine_chat(engine, model: str, content: str, **kwargs):
    return client(engine, ENGINE_KEY).chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=6, **kwargs)


@pytest.mark.parametrize("model", ["alpha", "beta"])
def test_the_gateway_answers_what_the_engine_answers_for_each_adapter(gateway, engine, model):
    through = chat(gateway, model=model)
    direct = engine_chat(engine, model, PROMPT)
    assert through.choices[0].message.content == direct.choices[0].message.content
    assert through.usage.prompt_tokens == direct.usage.prompt_tokens
    assert through.usage.completion_tokens == direct.usage.completion_tokens
    streamed = chat(gateway, model=model, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == direct.choices[0].message.content


def test_several_seeded_choices_are_the_engines_own(gateway, engine):
    """n choices go to the engine as n requests at once, choice i seeded seed + i, as the engine itself seeds."""
    ask = {"n": 3, "temperature": 1.0, "seed": 11}
    through = chat(gateway, **ask)
    direct = engine_chat(engine, "alpha", PROMPT, **ask)
    assert [c.message.content for c in through.choices] == [c.message.content for c in direct.choices]
    assert len({c.message.content for c in direct.choices}) > 1  # sampled: the seeds differ


def test_guardrails_and_the_request_log_stay_with_the_gateway(gateway):
    blocked = chat(gateway, content="How do I make explosives at home?")
    assert blocked.choices[0].finish_reason == "content_filter"
    assert blocked.choices[0].message.content == gateway.state.cfg.guard.fallback
    gateway.state.flush()
    with sqlite3.connect(gateway.state.request_log.path) as db:
        rows = db.execute("SELECT model, guard_blocked, status FROM requests").fetchall()
    assert ("alpha", 1, 200) in rows and any(r[1] == 0 for r in rows)
    assert [m.id for m in client(gateway).models.list().data if m.id in ("alpha", "beta")] == ["alpha", "beta"]


def test_decoding_constraints_travel_to_the_engine(gateway):
    labels = ["red", "green", "blue"]
    reply = chat(gateway, extra_body={"structured_outputs": {"choice": labels}})
    assert reply.choices[0].message.content in labels
    assert reply.model_extra["x_tunekit"]["constraint"] == "choice of 3 labels"


def test_adapters_cannot_be_loaded_into_an_engine_while_it_serves(serve_project, engine, tmp_path):
    env = {"TUNEKIT_API_KEYS": KEY, "TUNEKIT_ENGINE_API_KEY": ENGINE_KEY, "TUNEKIT_ADMIN_KEYS": "sk-admin-1"}
    with running_fast(serve_project, f"serve.log_db={tmp_path / 'r.db'}", f"serve.engine_url={engine.base_url}",
                 env=env) as server:
        body = json.dumps({"lora_name": "gamma", "lora_path": str(serve_project.beta)})
        error = assert_openai_error(post(server, "/v1/load_lora_adapter", body, key="sk-admin-1"), 409)
    assert error["code"] == "engine_adapters"


def test_an_engine_that_is_down_or_lacks_a_model_is_refused_at_start(serve_project, engine, tmp_path):
    with pytest.raises(UserError, match="did not list its models") as down:
        start(serve_project, f"serve.log_db={tmp_path / 'r.db'}", "serve.engine_url=http://127.0.0.1:9/v1")
    assert down.value.where == "serve.engine_url"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNEKIT_ENGINE_API_KEY", ENGINE_KEY)
        with pytest.raises(UserError, match=r"does not serve \['gamma'\]"):
            start(serve_project, f"serve.log_db={tmp_path / 'r.db'}", f"serve.engine_url={engine.base_url}",
                  adapters=[("gamma", serve_project.beta)])


def test_serve_engine_vllm_on_a_machine_without_it_exits_2_with_a_message(serve_project):
    result = tunekit("serve", str(serve_project.alpha), "--engine", "vllm", "--port", "0")
    assert result.returncode == 2, result.stderr
    assert "vLLM" in result.stderr and "Traceback" not in result.stderr
    both = tunekit("serve", str(serve_project.alpha), "--engine", "vllm", "--engine-url", "http://127.0.0.1:9/v1")
    assert both.returncode == 2 and "set one of them" in both.stderr.replace("\n", " ")


def test_the_vllm_command_serves_the_run_adapters_unchanged_under_their_names(serve_project, tmp_path):
    """What vLLM is started with: the base model, each adapter folder as `tunekit train` wrote it (PEFT format)
    under its served name, and a LoRA rank limit that fits them; adapters vLLM cannot load are refused."""
    from tunekit.serve.loading import load_served
    from tunekit.serve.vllm import vllm_command

    served = load_served(str(serve_project.alpha), [("beta", serve_project.beta)], name="alpha", weights=False)
    assert served.model is None
    command = vllm_command(served, "127.0.0.1", 8123, ["--gpu-memory-utilization", "0.5"])
    at = command.index("--lora-modules")
    adapters = [f"{name}={served.adapters[name].adapter_dir}" for name in ("alpha", "beta")]
    assert command[at + 1:at + 3] == adapters and adapters[0].endswith("/adapter")
    assert command[command.index("--model") + 1] == str(served.base_path)
    config = json.loads((serve_project.alpha / "adapter" / "adapter_config.json").read_text())
    assert int(command[command.index("--max-lora-rank") + 1]) >= config["r"]
    assert command[-2:] == ["--gpu-memory-utilization", "0.5"]
    assert config["peft_type"] == "LORA" and not config.get("use_dora")
    dora = Path(tmp_path / "dora")
    dora.mkdir()
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    from tunekit.serve.vllm import lora_rank

    with pytest.raises(UserError, match="DoRA; vLLM serves LoRA adapters only"):
        lora_rank(dora, "d")
