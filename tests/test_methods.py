"""Every discovered fine-tuning method: validation against the architecture, apply, a few optimizer steps
that lower the loss and touch only trainable weights, its traits against what it does, and PEFT's adapter
round trip. The matrix runs over `available_methods()`, so a method added as one file is tested by it, as
the LoHa plugin below is."""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import tunekit.methods
from tunekit.config import MethodConfig
from tunekit.errors import ConfigError
from tunekit.methods import (
    Method,
    ModelArch,
    available_methods,
    check_gradient_checkpointing,
    check_options_read,
    fix_prompt_learning_generate,
    get_method,
    inspect_architecture,
    methods_where,
    registry,
    resolve_target_modules,
)

PEFT_METHODS = methods_where(lambda cls: cls.uses_peft)


@pytest.fixture(autouse=True)
def _quiet() -> Any:
    # transformers 5 deprecation chatter from PEFT's `past_key_values` (see methods/_peft_generate.py).
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


def test_every_public_module_of_the_package_is_a_registered_method() -> None:
    package = Path(tunekit.methods.__file__).parent
    modules = {p.stem for p in package.glob("*.py") if not p.stem.startswith("_")} - set(registry.NOT_METHODS)
    # Each built-in module is named after its method, and nothing registers from anywhere else.
    assert modules == set(available_methods())
    assert {"full", "lora", "dora", "qlora", "ia3", "prefix", "prompt", "freeze"} <= modules  # the README's
    for name in available_methods():
        method = get_method(name)
        assert method.name == name and type(method).__module__ == f"tunekit.methods.{name}"
        assert set(method.options) <= set(MethodConfig.model_fields) - {"name"}


def test_register_refuses_bad_names_options_and_clashes() -> None:
    def method(name: str, options: tuple[str, ...] = ()) -> type[Method]:
        return type("Bad", (get_method("full").__class__,), {"name": name, "options": options})

    with pytest.raises(ValueError, match="lower-case identifier"):
        registry.register(method("Lo-Ra"))
    with pytest.raises(ValueError, match=r"\['rank'\] are not MethodConfig fields"):
        registry.register(method("fine", ("rank",)))
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(method("lora"))


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


class RecordedOptions:
    """A MethodConfig that notes which fields the method reads."""

    def __init__(self, opts: MethodConfig):
        self.opts, self.read = opts, set()

    def __getattr__(self, key: str) -> Any:
        self.read.add(key)
        return getattr(self.opts, key)


@pytest.mark.parametrize("name", available_methods())
def test_trains_only_trainable_params(name: str, tiny_model_dir: Path) -> None:
    check_trains_only_trainable_params(name, tiny_model_dir)


def check_trains_only_trainable_params(name: str, model_dir: Path) -> None:
    """The matrix every method runs: its traits describe what it does, and a few steps lower the loss
    while touching only the parameters it made trainable."""
    from peft import PeftModel

    method = get_method(name)
    opts = RecordedOptions(MethodConfig(name=name, dropout=0.0) if name == "qlora" else MethodConfig(name=name))
    arch = inspect_architecture(model_dir)
    method.validate(opts, arch)
    torch.manual_seed(0)
    base = load(model_dir, opts)
    base_params = {id(p) for p in base.parameters()}
    model = method.apply(base, opts, arch)
    assert opts.read - {"name"} == set(method.options), f"{name} reads {sorted(opts.read)}"
    assert isinstance(model, PeftModel) == method.uses_peft
    prompt_learning = getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False)
    assert prompt_learning == method.prompt_learning
    trainable_base = [p for p in model.parameters() if p.requires_grad and id(p) in base_params]
    assert bool(trainable_base) == method.trains_base_weights
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


@pytest.mark.parametrize("name", PEFT_METHODS)
def test_adapter_round_trip(name: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    check_adapter_round_trip(name, tiny_model_dir, tmp_path)


def check_adapter_round_trip(name: str, tiny_model_dir: Path, tmp_path: Path) -> None:
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

    from tunekit.methods._dropout import FastDropout

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
    assert type(q_proj.base_layer).__name__ == "TrainableLinear4bit"  # methods/_linear4bit.py
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
    from tunekit.methods._linear4bit import TrainableLinear4bit, make_trainable

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

    from tunekit.methods._linear4bit import make_trainable

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


@pytest.mark.parametrize("name", methods_where(lambda cls: cls.prompt_learning))
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


def reading(option: str) -> list[str]:
    return methods_where(lambda cls: option in cls.options)


@pytest.mark.parametrize("name", reading("r"))
def test_rank_zero_rejected(name: str, arch: ModelArch) -> None:
    with pytest.raises(ConfigError) as info:
        get_method(name).validate(MethodConfig(name=name, r=0), arch)
    assert info.value.where == "method.r"
    assert "0" in str(info.value)


@pytest.mark.parametrize("name", reading("target_modules"))
def test_unknown_target_module_lists_real_ones(name: str, arch: ModelArch) -> None:
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


@pytest.mark.parametrize("name", reading("num_virtual_tokens"))
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


def test_prefix_cannot_train_with_gradient_checkpointing() -> None:
    """Prefix tuning under checkpointing loses its cache in transformers 5 and crashes: reject it up front."""
    assert not get_method("prefix").supports_gradient_checkpointing
    for name in methods_where(lambda cls: not cls.supports_gradient_checkpointing):
        with pytest.raises(ConfigError) as info:
            check_gradient_checkpointing(get_method(name), True)
        assert info.value.where == "training.gradient_checkpointing"
        check_gradient_checkpointing(get_method(name), False)


@pytest.mark.parametrize("name", methods_where(lambda cls: cls.supports_gradient_checkpointing))
def test_trains_with_gradient_checkpointing(name: str, tiny_model_dir: Path) -> None:
    check_gradient_checkpointing(get_method(name), True)
    model, _ = prepared(tiny_model_dir, MethodConfig(name=name))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if get_method(name).uses_peft:  # PEFT-frozen embeddings: inputs must carry grad into checkpointed layers
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


def test_default_learning_rates() -> None:
    """Adapters start from zero and take large steps; the model's own weights need small ones."""
    assert get_method("full").default_learning_rate == 2e-5
    assert get_method("freeze").default_learning_rate == 5e-5
    assert all(get_method(name).default_learning_rate == 2e-4 for name in PEFT_METHODS)


# --------------------------------------------------------------------------- options a method does not read

# A valid value other than the default for every MethodConfig field but `name`.
NON_DEFAULT = {"r": 8, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj"], "num_virtual_tokens": 4,
               "prompt_init_text": "Answer:", "trainable_layers": 1, "quant_type": "fp4", "double_quant": False}


def test_non_default_values_cover_every_option() -> None:
    assert set(NON_DEFAULT) == set(MethodConfig.model_fields) - {"name"}
    assert all(getattr(MethodConfig(), key) != value for key, value in NON_DEFAULT.items())


@pytest.mark.parametrize("name", available_methods())
def test_an_option_the_method_does_not_read_is_an_error(name: str) -> None:
    method = get_method(name)
    check_options_read(method, MethodConfig(name=name, **{k: NON_DEFAULT[k] for k in method.options}))
    # Set to its default, a key changes nothing: a saved run's config.yaml lists every field that way.
    check_options_read(method, MethodConfig(name=name, **MethodConfig().model_dump(exclude={"name"})))
    for key in sorted(set(NON_DEFAULT) - set(method.options)):
        with pytest.raises(ConfigError) as info:
            check_options_read(method, MethodConfig(name=name, **{key: NON_DEFAULT[key]}))
        assert info.value.where == f"method.{key}"
        assert f"'{name}' does not read this option" in str(info.value)
        assert all(option in str(info.value) for option in method.options)


def test_unread_options_are_named_with_what_the_method_reads() -> None:
    with pytest.raises(ConfigError) as info:
        check_options_read(get_method("ia3"), MethodConfig(name="ia3", r=8, alpha=4))
    assert info.value.render() == ("method.alpha, method.r: 'ia3' does not read these options (ia3 reads: "
                                   "target_modules; remove them, or choose a method that reads them)")
    with pytest.raises(ConfigError) as info:
        check_options_read(get_method("full"), MethodConfig(name="full", dropout=0.0))
    assert "full reads no method.* option but name" in str(info.value)


def test_a_training_run_checks_its_method_once(tmp_path: Path, tiny_model_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`tunekit train` checks the method before it starts training, and training reuses that check: one
    architecture inspection (a meta-device model build) per run."""
    from cli_helpers import run_in_process as run_cli
    from train_helpers import make_project

    inspected = []
    real = tunekit.methods.inspect_architecture
    monkeypatch.setattr(tunekit.methods, "inspect_architecture", lambda *a, **k: inspected.append(a) or real(*a, **k))
    code, output = run_cli(monkeypatch, capsys, "train", make_project(tmp_path, tiny_model_dir), "training.max_steps=1")
    assert code == 0, output[-2000:]
    assert len(inspected) == 1


# ------------------------------------------------------------------------------ a method added as one file

LOHA = '''
"""LoHa (Hyeon-Woo et al. 2022): PEFT's low-rank Hadamard-product adapters."""

from __future__ import annotations

import torch

from tunekit.config import MethodConfig
from tunekit.methods.base import Method, ModelArch, resolve_target_modules
from tunekit.methods.lora import validate_lora, wrap
from tunekit.methods.registry import register


@register
class LoHa(Method):
    name = "loha"
    summary = "low-rank Hadamard-product adapters"
    options = ("r", "alpha", "target_modules")
    uses_peft = True

    def validate(self, opts: MethodConfig, arch: ModelArch) -> None:
        validate_lora(opts, arch)

    def apply(self, model: torch.nn.Module, opts: MethodConfig, arch: ModelArch) -> torch.nn.Module:
        from peft import LoHaConfig, TaskType

        targets = resolve_target_modules(opts, arch)
        return wrap(model, LoHaConfig(task_type=TaskType.CAUSAL_LM, r=opts.r, alpha=opts.alpha, target_modules=targets))
'''


@pytest.fixture(params=["package", "entry_point"])
def loha_plugin(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """LoHa as one file, discoverable either way a method can be: as a module of the `tunekit.methods`
    package (its search path extended, so nothing is written into src/) or as an installed package's
    `tunekit.methods` entry point (a dist-info folder on sys.path, as pip would write it). Discovery runs
    again into a copy of the registry, so the method is gone after the test."""
    folder = tmp_path / "plugin"
    folder.mkdir()
    if request.param == "package":
        module = "tunekit.methods.loha"
        (folder / "loha.py").write_text(LOHA, encoding="utf-8")
        monkeypatch.setattr(tunekit.methods, "__path__", [*tunekit.methods.__path__, str(folder)])
    else:
        module = "tunekit_loha_plugin"
        (folder / f"{module}.py").write_text(LOHA, encoding="utf-8")
        info = folder / f"{module}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n", encoding="utf-8")
        (info / "entry_points.txt").write_text(f"[tunekit.methods]\nloha = {module}\n", encoding="utf-8")
        monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    monkeypatch.setattr(registry, "_discovered", False)
    try:
        yield module
    finally:
        sys.modules.pop(module, None)
        vars(tunekit.methods).pop("loha", None)


def test_a_method_added_as_one_file_runs_the_matrix(loha_plugin: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    assert "loha" in available_methods() and type(get_method("loha")).__module__ == loha_plugin
    check_trains_only_trainable_params("loha", tiny_model_dir)
    check_adapter_round_trip("loha", tiny_model_dir, tmp_path / "adapter")
    with pytest.raises(ConfigError, match="loha reads: r, alpha, target_modules"):
        check_options_read(get_method("loha"), MethodConfig(name="loha", dropout=0.0))


@pytest.mark.parametrize("loha_plugin", ["entry_point"], indirect=True)  # the package route trains the same
def test_a_method_added_as_one_file_trains_in_a_run(loha_plugin: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    from train_helpers import make_project, run_in_process

    _, result = run_in_process(make_project(tmp_path, tiny_model_dir), "method.name=loha", "method.r=4",
                               "training.max_steps=2")
    assert result["state"].step == 2
    assert json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LOHA"


def test_no_plugin_is_left_behind() -> None:
    assert "loha" not in available_methods()
    assert not (Path(tunekit.methods.__file__).parent / "loha.py").exists()


# ------------------------------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_methods_on_smollm2(smollm2_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arch = inspect_architecture(smollm2_dir)
    assert (arch.num_layers, arch.hidden_size) == (30, 576)
    inputs = batch(arch.vocab_size, rows=2, length=32)
    report = []
    for name in PEFT_METHODS:
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
