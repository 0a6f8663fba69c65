"""Every registered fine-tuning method: validation against the architecture, apply, a few optimizer steps
that lower the loss and touch only trainable weights, and PEFT's adapter round trip."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from tunekit.config import MethodConfig
from tunekit.errors import ConfigError
from tunekit.methods import (
    ModelArch,
    available_methods,
    check_gradient_checkpointing,
    fix_prompt_learning_generate,
    get_method,
    inspect_architecture,
    resolve_target_modules,
)

PEFT_METHODS = {"lora", "dora", "qlora", "ia3", "prefix", "prompt"}


@pytest.fixture(autouse=True)
def _quiet() -> Any:
    # transformers 5 deprecation chatter from PEFT's `past_key_values` (see methods/peft_generate.py).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


@pytest.fixture(scope="module")
def arch(tiny_model_dir: Path) -> ModelArch:
    return inspect_architecture(tiny_model_dir)


def load(model_dir: Path, opts: MethodConfig) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    extra = get_method(opts.name).load_kwargs(opts, torch.float32)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **extra)


def prepared(model_dir: Path, opts: MethodConfig) -> tuple[torch.nn.Module, ModelArch]:
    arch = inspect_architecture(model_dir)
    method = get_method(opts.name)
    method.validate(opts, arch)
    torch.manual_seed(0)
    return method.apply(load(model_dir, opts), opts, arch), arch


def batch(vocab: int, rows: int = 2, length: int = 16) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, vocab, (rows, length), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def eval_loss(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    model.eval()  # no dropout: before/after losses are comparable
    with torch.no_grad():
        return float(model(**inputs).loss)


def train(model: torch.nn.Module, inputs: dict[str, torch.Tensor], steps: int, lr: float = 1e-2) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    for _ in range(steps):
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


# ------------------------------------------------------------------------------------------------ registry


def test_registry_lists_all_methods() -> None:
    assert available_methods() == sorted(
        ["full", "lora", "dora", "qlora", "ia3", "prefix", "prompt", "freeze"]
    )
    for name in available_methods():
        method = get_method(name)
        assert method.name == name
        assert method.uses_peft == (name in PEFT_METHODS)


def test_unknown_method_lists_available() -> None:
    with pytest.raises(ConfigError) as info:
        get_method("lorra")
    assert info.value.where == "method.name"
    assert "lorra" in str(info.value)
    for name in available_methods():
        assert name in str(info.value)


def test_inspect_architecture(arch: ModelArch, tiny_model_dir: Path) -> None:
    assert arch.model_type == "llama"
    assert arch.architectures == ["LlamaForCausalLM"]
    assert (arch.num_layers, arch.hidden_size, arch.vocab_size) == (2, 64, 512)
    assert arch.linear_names == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
    )
    assert arch.layer_prefix == "model.layers"
    assert arch.tied_embeddings is True
    assert arch.cache_kwarg in ("cache", "past_key_values")
    start = time.perf_counter()
    inspect_architecture(tiny_model_dir)
    assert time.perf_counter() - start < 2.0  # meta device: no weights read


# ------------------------------------------------------------------------------------------- every method


@pytest.mark.parametrize("name", available_methods())
def test_defaults_validate(name: str, arch: ModelArch) -> None:
    get_method(name).validate(MethodConfig(name=name), arch)


@pytest.mark.parametrize("name", available_methods())
def test_trains_only_trainable_params(name: str, tiny_model_dir: Path) -> None:
    opts = MethodConfig(name=name, dropout=0.0) if name == "qlora" else MethodConfig(name=name)
    model, _ = prepared(tiny_model_dir, opts)
    method = get_method(name)
    if method.uses_peft:
        from peft import PeftModel

        assert isinstance(model, PeftModel)
    stats = method.describe(model)
    assert 0 < stats["trainable_params"] <= stats["total_params"]
    assert stats["trainable_percent"] == pytest.approx(
        100 * stats["trainable_params"] / stats["total_params"], abs=1e-3
    )

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    inputs = batch(512)
    loss0 = eval_loss(model, inputs)
    train(model, inputs, steps=5)
    loss1 = eval_loss(model, inputs)
    assert loss1 < loss0, f"{name}: loss {loss0:.4f} -> {loss1:.4f}"

    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed, name
    assert changed <= trainable, f"{name}: frozen weights changed: {sorted(changed - trainable)[:5]}"
    if name == "full":
        assert trainable == set(before)


@pytest.mark.parametrize("name", sorted(PEFT_METHODS))
def test_adapter_round_trip(name: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    opts = MethodConfig(name=name)
    model, _ = prepared(tiny_model_dir, opts)
    inputs = batch(512)
    train(model, inputs, steps=2)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert config["task_type"] == "CAUSAL_LM"

    model.eval()
    reloaded = PeftModel.from_pretrained(load(tiny_model_dir, opts), tmp_path).eval()
    if name == "qlora":
        # Same 4-bit kernel as the trained model: bitsandbytes' CPU inference layout (AVX512-BF16) computes
        # in bf16 and differs by ~1e-3 in the logits.
        from tunekit.methods.qlora import keep_trainable_layout

        keep_trainable_layout(reloaded)
    ids = inputs["input_ids"]
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ per method


def test_lora_targets_all_linear_but_head(arch: ModelArch, tiny_model_dir: Path) -> None:
    targets = resolve_target_modules(MethodConfig(), arch)
    assert "lm_head" not in targets
    assert set(targets) == set(arch.linear_names) - {"lm_head"}
    model, _ = prepared(tiny_model_dir, MethodConfig(name="lora", r=4))
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 32, 0.05)
    assert set(config.target_modules) == set(targets)
    # 2 layers x 7 linears x r x (in + out)
    per_layer = 4 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 3)
    assert get_method("lora").describe(model)["trainable_params"] == 2 * per_layer


def test_lora_dropout_is_the_fast_mask_with_dropout_semantics(tiny_model_dir: Path) -> None:
    from torch.utils.checkpoint import checkpoint

    from tunekit.methods.dropout import FastDropout

    model, _ = prepared(tiny_model_dir, MethodConfig(name="lora", r=4))
    swapped = [m for m in model.modules() if isinstance(m, FastDropout)]
    assert len(swapped) == 2 * 7 and all(m.p == 0.05 for m in swapped)  # 2 layers x 7 adapted linears
    dropout = FastDropout(0.3).train()
    x = torch.ones(1000, 1000)
    out = dropout(x)
    zeroed = float((out == 0).float().mean())
    assert abs(zeroed - 0.3) < 0.003  # 1M independent draws: the standard error is 0.0005
    assert abs(float(out.mean()) - 1.0) < 0.005  # survivors scaled: the expectation is unchanged
    assert out.unique().tolist() == pytest.approx([0.0, dropout.scale])
    assert torch.equal(dropout.eval()(x), x)
    # Gradient checkpointing recomputes the forward: the same global generator state gives the same mask.
    dropout.train()
    weight = torch.randn(64, 64, requires_grad=True)
    inputs = torch.randn(8, 64)

    def layer(t: torch.Tensor) -> torch.Tensor:
        return dropout(t) @ weight

    grads = []
    for use_checkpoint in (False, True):
        torch.manual_seed(5)
        out = checkpoint(layer, inputs, use_reentrant=False) if use_checkpoint else layer(inputs)
        (grad,) = torch.autograd.grad(out.square().sum(), weight)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_dora_adds_magnitude(tiny_model_dir: Path) -> None:
    model, _ = prepared(tiny_model_dir, MethodConfig(name="dora", target_modules=["q_proj"]))
    assert model.peft_config["default"].use_dora
    assert any("lora_magnitude_vector" in n for n, p in model.named_parameters() if p.requires_grad)


def test_ia3_default_targets(arch: ModelArch, tiny_model_dir: Path) -> None:
    model, _ = prepared(tiny_model_dir, MethodConfig(name="ia3"))
    config = model.peft_config["default"]
    assert set(config.target_modules) == {"k_proj", "v_proj", "down_proj"}
    assert set(config.feedforward_modules) == {"down_proj"}


def test_freeze_trains_last_layers_and_final_norm(tiny_model_dir: Path) -> None:
    model, _ = prepared(tiny_model_dir, MethodConfig(name="freeze", trainable_layers=1))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing trainable"
    assert all(n.startswith("model.layers.1.") or n.startswith("model.norm.") for n in trainable)
    assert "model.norm.weight" in trainable
    assert not any(n.startswith("model.layers.0.") or "embed" in n for n in trainable)


def test_prompt_init_from_text(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    text = "Answer the question"
    model, _ = prepared(
        tiny_model_dir, MethodConfig(name="prompt", num_virtual_tokens=3, prompt_init_text=text)
    )
    ids = AutoTokenizer.from_pretrained(tiny_model_dir)(text)["input_ids"][:3]
    ids = (ids * 3)[:3]
    expected = model.get_input_embeddings()(torch.tensor(ids))
    got = model.prompt_encoder["default"].embedding.weight
    torch.testing.assert_close(got, expected)


def test_qlora_quantizes_to_4bit(tiny_model_dir: Path) -> None:
    from transformers import BitsAndBytesConfig

    kwargs = get_method("qlora").load_kwargs(MethodConfig(name="qlora"), torch.bfloat16)
    config = kwargs["quantization_config"]
    assert isinstance(config, BitsAndBytesConfig)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    model, _ = prepared(tiny_model_dir, MethodConfig(name="qlora"))
    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj
    assert type(q_proj.base_layer).__name__ == "TrainableLinear4bit"  # methods/linear4bit.py
    stats = get_method("qlora").describe(model)
    # 4-bit weights count at their real parameter number, not their packed byte count
    base_params = sum(p.numel() for p in load(tiny_model_dir, MethodConfig()).parameters())
    assert stats["total_params"] == base_params + stats["trainable_params"]


def test_qlora_gradients_survive_an_eval_pass(tiny_model_dir: Path) -> None:
    """Regression for bitsandbytes 0.50 on AVX512-BF16 CPUs: an eval/no-grad forward used to repack the
    4-bit weights into a layout whose kernel has no autograd, silently dropping gradients afterwards."""
    opts = MethodConfig(name="qlora", dropout=0.0)
    inputs = batch(512)

    def grads(after_eval: bool) -> dict[str, torch.Tensor]:
        model, _ = prepared(tiny_model_dir, opts)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:  # non-zero B: every adapter's gradient depends on the input path
                    p.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(5))
        if after_eval:
            eval_loss(model, inputs)
        model.train()
        model(**inputs).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    fresh, evaluated = grads(False), grads(True)
    for name, grad in fresh.items():
        torch.testing.assert_close(evaluated[name], grad, msg=name)


def linear4bit(nested: bool, rows: int = 32, cols: int = 64) -> torch.nn.Module:
    import bitsandbytes as bnb

    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    layer = bnb.nn.Linear4bit(cols, rows, bias=False, compute_dtype=torch.bfloat16, compress_statistics=nested)
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", compress_statistics=nested)
    layer = layer.to("cpu")  # quantizes
    layer.support_avx512bf16_for_cpu = False  # bitsandbytes' own training path, as qlora.apply leaves it
    return layer


@pytest.mark.parametrize("nested", [True, False])
def test_trainable_4bit_layer_computes_what_bitsandbytes_does(nested: bool) -> None:
    from tunekit.methods.linear4bit import TrainableLinear4bit, make_trainable

    layer = linear4bit(nested)
    x = torch.randn(3, 7, 64, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(3), requires_grad=True)
    weights = torch.randn(3, 7, 32, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(4))

    def forward_backward() -> tuple[torch.Tensor, torch.Tensor]:
        x.grad = None
        out = layer(x)
        (out * weights).sum().backward()
        return out.detach(), x.grad

    expected = forward_backward()  # bitsandbytes' MatMul4Bit
    assert make_trainable(torch.nn.Sequential(layer)) == 1 and type(layer) is TrainableLinear4bit
    got = forward_backward()
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_compiled_4bit_layer_is_cacheable() -> None:
    """bitsandbytes' autograd.Function made AOTAutograd skip its cache, so every QLoRA run recompiled."""
    from torch._dynamo.utils import counters

    from tunekit.methods.linear4bit import make_trainable

    layer = linear4bit(nested=True)
    make_trainable(torch.nn.Sequential(layer))
    torch._dynamo.reset()
    counters.clear()
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16, requires_grad=True)
    torch.compile(layer)(x).sum().backward()
    cache = counters["aot_autograd"]
    assert cache["autograd_cache_bypass"] == 0
    assert cache["autograd_cache_miss"] + cache["autograd_cache_hit"] == 1
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["prefix", "prompt"])
def test_prompt_learning_generate_uses_the_adapter(name: str, tiny_model_dir: Path) -> None:
    """Regression for transformers 5 (`cache` kwarg) + PEFT 0.21: generate() with the KV cache must match
    a cache-free greedy decode of the adapted model, and differ from the base model."""
    model, _ = prepared(tiny_model_dir, MethodConfig(name=name, num_virtual_tokens=4))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(3))
    model.eval()
    prompt = batch(512, rows=1, length=6)["input_ids"]
    out = model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=4,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    seq = out.sequences
    with torch.no_grad():
        full = model(input_ids=seq, attention_mask=torch.ones_like(seq), use_cache=False).logits
        with model.disable_adapter():
            base = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits
    offset = full.shape[1] - seq.shape[1]  # prompt tuning returns logits for the virtual tokens too
    for step, logits in enumerate(out.logits):
        pos = prompt.shape[1] - 1 + step
        torch.testing.assert_close(logits[0], full[0, offset + pos], atol=1e-4, rtol=0)
        assert not torch.allclose(logits[0], base[0, pos], atol=1e-3)
    assert fix_prompt_learning_generate(model) is model  # idempotent


# ------------------------------------------------------------------------------------------ validation


def test_rank_zero_rejected(arch: ModelArch) -> None:
    for name in ("lora", "dora", "qlora"):
        with pytest.raises(ConfigError) as info:
            get_method(name).validate(MethodConfig(name=name, r=0), arch)
        assert info.value.where == "method.r"
        assert "0" in str(info.value)


def test_unknown_target_module_lists_real_ones(arch: ModelArch) -> None:
    for name in ("lora", "dora", "qlora", "ia3"):
        with pytest.raises(ConfigError) as info:
            get_method(name).validate(MethodConfig(name=name, target_modules=["q_proj", "qkv"]), arch)
        assert info.value.where == "method.target_modules"
        message = str(info.value)
        assert "qkv" in message and "q_proj" in message and "down_proj" in message


def test_freeze_too_many_layers_names_layer_count(arch: ModelArch) -> None:
    with pytest.raises(ConfigError) as info:
        get_method("freeze").validate(MethodConfig(name="freeze", trainable_layers=99), arch)
    assert info.value.where == "method.trainable_layers"
    assert "99" in str(info.value) and "2 decoder layers" in str(info.value)
    with pytest.raises(ConfigError):
        get_method("freeze").validate(MethodConfig(name="freeze", trainable_layers=0), arch)


@pytest.mark.parametrize("name", ["prefix", "prompt"])
def test_virtual_tokens_positive(name: str, arch: ModelArch) -> None:
    with pytest.raises(ConfigError) as info:
        get_method(name).validate(MethodConfig(name=name, num_virtual_tokens=0), arch)
    assert info.value.where == "method.num_virtual_tokens"


def test_prompt_empty_init_text(arch: ModelArch) -> None:
    with pytest.raises(ConfigError) as info:
        get_method("prompt").validate(MethodConfig(name="prompt", prompt_init_text="  "), arch)
    assert info.value.where == "method.prompt_init_text"


def test_prefix_rejects_architectures_without_kv_cache(arch: ModelArch) -> None:
    from dataclasses import replace

    for bad in (replace(arch, cache_kwarg=None), replace(arch, layer_types=["full_attention", "mamba"])):
        with pytest.raises(ConfigError) as info:
            get_method("prefix").validate(MethodConfig(name="prefix"), bad)
        assert info.value.where == "method.name"
        assert "prefix tuning does not work" in str(info.value)


def test_gradient_checkpointing_compatibility(tiny_model_dir: Path) -> None:
    """Prefix tuning under checkpointing loses its cache in transformers 5 and crashes: reject it up front.
    The others train with checkpointing on."""
    with pytest.raises(ConfigError) as info:
        check_gradient_checkpointing(get_method("prefix"), True)
    assert info.value.where == "training.gradient_checkpointing"
    check_gradient_checkpointing(get_method("prefix"), False)
    for name in ["lora", "prompt", "freeze"]:
        check_gradient_checkpointing(get_method(name), True)
        model, _ = prepared(tiny_model_dir, MethodConfig(name=name))
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if name != "freeze":  # PEFT-frozen embeddings: inputs must carry grad into checkpointed layers
            model.enable_input_require_grads()
        train(model, batch(512), steps=1)


def test_qlora_without_bitsandbytes_says_how_to_install(
    arch: ModelArch, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    with pytest.raises(ConfigError) as info:
        get_method("qlora").validate(MethodConfig(name="qlora"), arch)
    assert "pip install 'tunekit[qlora]'" in str(info.value)


# ------------------------------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_methods_on_smollm2(smollm2_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arch = inspect_architecture(smollm2_dir)
    assert (arch.num_layers, arch.hidden_size) == (30, 576)
    inputs = batch(arch.vocab_size, rows=2, length=32)
    report = []
    for name in ["lora", "qlora", "prefix", "prompt", "ia3", "dora"]:
        start = time.perf_counter()
        model, _ = prepared(smollm2_dir, MethodConfig(name=name))
        loaded = time.perf_counter()
        loss0 = eval_loss(model, inputs)
        train(model, inputs, steps=2, lr=1e-3)
        loss1 = eval_loss(model, inputs)
        stats = get_method(name).describe(model)
        report.append(
            f"{name:7s} trainable={stats['trainable_params']:>11,} total={stats['total_params']:>12,} "
            f"({stats['trainable_percent']:.3f}%) loss {loss0:.3f}->{loss1:.3f} "
            f"load+apply {loaded - start:.1f}s 2 steps {time.perf_counter() - loaded:.1f}s"
        )
        assert torch.isfinite(torch.tensor(loss1)), name
        assert loss1 < loss0, report[-1]
        del model
    with capsys.disabled():
        print("\n" + "\n".join(report))
