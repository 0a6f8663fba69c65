"""Prepacked bf16 linear layers and a lone LoRA adapter folded into them (generate/fast_linear.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import test_generate
from test_generate import PROMPTS, lora_config, scrambled, two_adapters
from tunekit.generate import GenerationParams, Generator, fast_linear

pytestmark = pytest.mark.skipif(not fast_linear.supported(torch.bfloat16, torch.device("cpu")),
                                reason="this CPU has no oneDNN bf16 kernels")
GREEDY = GenerationParams(max_new_tokens=16)


# The engine tests' own module-scoped fixtures: the tiny model with scrambled weights and its tokenizer.
tokenizer, model = test_generate.tokenizer, test_generate.model


def texts(gen: Generator, **kwargs: Any) -> list[str]:
    return [o.text for o in gen.generate(PROMPTS, GREEDY, **kwargs)]


def test_packed_weights_give_the_same_tokens_as_plain_bf16(model: Any, tokenizer: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    fast = Generator(model, tokenizer, dtype="bf16")
    assert fast.fast_linears is not None and fast.fast_linears.linears
    monkeypatch.setattr(fast_linear, "supported", lambda *a: False)
    plain = Generator(model, tokenizer, dtype="bf16")
    assert plain.fast_linears is None
    assert texts(fast) == texts(plain)  # the same oneDNN kernel: bit-identical, only faster
    assert not any("forward" in vars(m) for m in model.modules())  # the caller's model is never patched


def test_no_packing_on_a_model_the_caller_decodes_with(model: Any, tokenizer: Any) -> None:
    assert Generator(model, tokenizer, dtype="fp32").fast_linears is None  # fp32: aten's kernels, as before
    bf16 = scrambled(type(model)(model.config).to(torch.bfloat16))
    assert Generator(bf16, tokenizer, dtype="bf16").fast_linears is None  # no copy made: it is the caller's


def logits(model: Any, text_ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=text_ids).logits.float()


def test_a_lone_lora_adapter_is_folded_into_the_packed_weights(tiny_model_dir: Path, tokenizer: Any) -> None:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = scrambled(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32))
    torch.manual_seed(1)
    peft = get_peft_model(base, lora_config(), adapter_name="first").eval()
    gen = Generator(peft, tokenizer, dtype="bf16")
    assert gen.fast_linears.folded == "first"
    text_ids = torch.tensor([tokenizer(gen.render(PROMPTS[0]))["input_ids"]])
    exact = logits(peft, text_ids)
    with peft.disable_adapter():
        without = logits(peft, text_ids)
    folded = logits(gen.model, text_ids)
    # The adapter is in: the folded bf16 logits are far closer to the adapted fp32 ones than to the base's.
    assert (folded - exact).abs().max() < 0.1 * (without - exact).abs().max()


def test_a_second_adapter_unfolds_and_removing_it_folds_again(tiny_model_dir: Path, tokenizer: Any,
                                                              tmp_path: Path) -> None:
    peft = two_adapters(tiny_model_dir, lora_config())
    peft.save_pretrained(tmp_path)  # adapter folders "first" (the root) and "second"
    peft.delete_adapter("second")
    gen = Generator(peft, tokenizer, dtype="bf16")
    assert gen.fast_linears.folded == "first"
    before = texts(gen)
    gen.load_adapter("second", tmp_path / "second")
    assert gen.fast_linears.folded is None
    assert not any("forward" in vars(m) for m in gen.fast_linears.model.modules() if hasattr(m, "lora_A"))
    assert texts(gen, adapter="second") != texts(gen, adapter="first")  # each row its own adapter again
    gen.unload_adapter("second")
    assert gen.fast_linears.folded == "first"
    assert texts(gen) == before
