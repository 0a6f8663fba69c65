"""What the serve tests share: a project with two adapters and an index, a server's state, the client calls."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest

from train_helpers import color_rows
from tunekit.serve.server import serve_in_thread
from tunekit.serve.state import build_state

KEY = "sk-test-abc123"
PROMPT = "request 3: paint item 39 blue please now"
DOC = """# Refunds

Refunds are paid back to the original card within 5 business days.
Ask for a refund from the Orders page by choosing Request refund.

# Shipping

Parcels ship from Rotterdam every weekday at noon.
"""


def write_project(root: Path, model_dir: Path, rows: list[dict], *, steps: int, extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = root / "tunekit.yaml"
    config.write_text(
        f"run_dir: {root / 'run'}\nmodel:\n  name: {model_dir}\n  max_seq_len: 128\n"
        "data:\n  files: [data.jsonl]\n  dedupe:\n    near: false\n"
        f"training:\n  max_steps: {steps}\n  batch_size: 4\n  learning_rate: 0.01\n  eval_every: {steps}\n"
        "  gradient_checkpointing: false\n  compile: false\n" + extra,
        encoding="utf-8",
    )
    return config


def random_adapter_copy(run: Path, out: Path) -> Path:
    """A second real run folder: `run`'s config and tokenizer with a freshly initialised (non-zero) LoRA."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunekit.config import load_config

    shutil.copytree(run, out, ignore=shutil.ignore_patterns("eval", "checkpoints", "serve"))
    cfg = load_config(out / "config.yaml")
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name)
    trained = PeftModel.from_pretrained(base, str(run / "adapter")).peft_config["default"]
    fresh = LoraConfig(r=trained.r, lora_alpha=trained.lora_alpha, target_modules=trained.target_modules,
                       init_lora_weights=False, task_type="CAUSAL_LM")
    shutil.rmtree(out / "adapter")
    get_peft_model(AutoModelForCausalLM.from_pretrained(cfg.model.name), fresh).save_pretrained(out / "adapter")
    return out


def build_serve_project(root: Path, tiny_model_dir: Path) -> SimpleNamespace:
    """Run 'alpha' learned to answer "<color> [1]" and was evaluated; 'beta' is a random adapter of the same
    base; an index holds one help page."""
    from tunekit.config import load_config
    from tunekit.eval.runner import check_eval, run_eval
    from tunekit.rag.index import build_index
    from tunekit.train.trainer import train

    rows = color_rows(120)
    for row in rows:
        row["messages"][1]["content"] += " [1]"
    config = write_project(root / "alpha", tiny_model_dir, rows, steps=20,
                           extra="eval:\n  candidates: [finetuned]\n  max_new_tokens: 6\n  max_samples: 4\n")
    cfg = load_config(config)
    train(cfg, say=lambda *_: None)
    run_eval(check_eval(cfg), say=lambda *_: None)
    beta = random_adapter_copy(root / "alpha" / "run", root / "beta")
    (root / "docs").mkdir()
    (root / "docs" / "refunds.md").write_text(DOC, encoding="utf-8")
    build_index([root / "docs"], root / "index.db")
    return SimpleNamespace(root=root, alpha=root / "alpha" / "run", beta=beta, index=root / "index.db",
                           model_dir=tiny_model_dir)


def start(project: SimpleNamespace, *overrides: str, adapters=None):
    """build_state for alpha (+ beta), the request log in the project folder."""
    adapters = [("beta", project.beta)] if adapters is None else adapters
    return build_state(str(project.alpha), adapters=adapters, name="alpha", say=lambda *_: None,
                       overrides=[f"serve.log_db={project.root / 'requests.db'}", "serve.max_tokens_limit=16",
                                  "serve.max_body_bytes=20000", *overrides])


@contextmanager
def running(project, *overrides: str, env: dict[str, str | None], adapters=None, target: str | None = None) -> Iterator:
    """A real server on loopback for `project` (alpha, and beta unless `adapters` say otherwise) or `target`,
    with `env` set (None: unset) while it starts, since keys are read then; closed afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            if value is None:
                patch.delenv(name, raising=False)
            else:
                patch.setenv(name, value)
        if target is None:
            state = start(project, *overrides, adapters=adapters)
        else:
            state = build_state(target, say=lambda *_: None, overrides=list(overrides))
    try:
        with serve_in_thread(state) as server:
            yield server
    finally:
        state.close()


def client(server, key: str | None = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key or "none", max_retries=0, timeout=60)


def chat(server, model="alpha", content=PROMPT, **kwargs):
    return client(server).chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                                  max_tokens=kwargs.pop("max_tokens", 6), **kwargs)


def post(server, path: str, body: bytes | str, key: str | None = KEY, **headers: str) -> httpx.Response:
    if key:
        headers["Authorization"] = f"Bearer {key}"
    headers.setdefault("Content-Type", "application/json")
    return httpx.post(server.url + path, content=body, headers=headers, timeout=60)


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error
