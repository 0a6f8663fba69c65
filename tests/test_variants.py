"""Cached copies of a model's weights: bf16, and QLoRA's pre-quantized NF4 copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from tunekit.models.resolve import ResolvedModel
from tunekit.models.variants import quantized_weights_in, weights_in

pytest.importorskip("bitsandbytes")


def _nf4(double_quant: bool = True) -> BitsAndBytesConfig:
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def _load(path: Path, **kwargs: object) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, use_safetensors=True, **kwargs).eval()


def test_the_quantized_copy_is_the_model_quantized_while_loading(tiny_model_dir: Path) -> None:
    resolved = ResolvedModel(name="tiny", path=tiny_model_dir, kind="folder", source=str(tiny_model_dir))
    copy = quantized_weights_in(resolved, torch.bfloat16, _nf4())
    assert json.loads((copy / "config.json").read_text())["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    from_copy = _load(copy)
    on_the_fly = _load(weights_in(resolved, torch.bfloat16), quantization_config=_nf4())
    packed = {n: p for n, p in on_the_fly.named_parameters()}
    for name, param in from_copy.named_parameters():
        assert torch.equal(param.data, packed[name].data), name
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    with torch.no_grad():
        torch.testing.assert_close(from_copy(ids).logits, on_the_fly(ids).logits, rtol=0, atol=0)


def test_the_quantized_copy_is_made_once_per_setting(tiny_model_dir: Path) -> None:
    resolved = ResolvedModel(name="tiny", path=tiny_model_dir, kind="folder", source=str(tiny_model_dir))
    first = quantized_weights_in(resolved, torch.bfloat16, _nf4())
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert quantized_weights_in(resolved, torch.bfloat16, _nf4()) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    other = quantized_weights_in(resolved, torch.bfloat16, _nf4(double_quant=False))
    assert other != first and (other / "model.safetensors").is_file()
