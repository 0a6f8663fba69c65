"""training.compile: compiled decoder layers compute eager's gradients (LoRA's dropout masks included), a
compiled run trains like an eager one, `auto` compiles only where it was measured to help, and `true` says
what is missing before any model loads."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch

from train_helpers import make_project, read_metrics, run_in_process, tunekit
from tunekit.config import MethodConfig
from tunekit.devices import DeviceInfo
from tunekit.errors import ConfigError
from tunekit.methods import get_method, inspect_architecture, methods_where
from tunekit.train.compile import compile_layers, cxx_compiler, decide_compile

needs_compiler = pytest.mark.skipif(cxx_compiler() is None, reason="no C++ compiler: inductor cannot build kernels")
CPU_BF16 = DeviceInfo(torch.device("cpu"), torch.bfloat16, "test")
CPU_FP32 = DeviceInfo(torch.device("cpu"), torch.float32, "test")


def lora_model(model_dir: Path, dropout: float) -> tuple[torch.nn.Module, str]:
    from transformers import AutoModelForCausalLM

    arch = inspect_architecture(model_dir)
    opts = MethodConfig(name="lora", r=4, dropout=dropout)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_method("lora").apply(model, opts, arch)
    with torch.no_grad():  # LoRA's B starts at zero; make the adapters matter so the gradients are rich
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model.train(), arch.layer_prefix


def adapter_gradients(model: torch.nn.Module, inputs: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)  # the dropout masks
    model(**inputs).loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


@needs_compiler
def test_compiled_layers_compute_eager_gradients_with_the_same_dropout_masks(tiny_model_dir: Path) -> None:
    eager_model, layer_prefix = lora_model(tiny_model_dir, dropout=0.3)
    compiled_model = copy.deepcopy(eager_model)
    assert compile_layers(compiled_model, layer_prefix, fall_back=False) == 2
    ids = torch.randint(3, 500, (3, 24), generator=torch.Generator().manual_seed(1))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    torch._dynamo.reset()
    eager = adapter_gradients(eager_model, inputs, seed=3)
    compiled = adapter_gradients(compiled_model, inputs, seed=3)
    other_masks = adapter_gradients(eager_model, inputs, seed=4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the layers really were compiled
    assert eager.keys() == compiled.keys() and len(eager) == 2 * 7 * 2  # 2 layers x 7 linears x (A, B)
    for name, grad in eager.items():
        torch.testing.assert_close(compiled[name], grad, rtol=1e-3, atol=1e-6, msg=name)
    # The check can fail: other masks (another seed) move the gradients far outside that tolerance.
    moved = max(float((other_masks[n] - g).norm() / g.norm()) for n, g in eager.items())
    assert moved > 0.05


@needs_compiler
def test_the_compiled_dropout_mask_is_the_eager_one_bit_for_bit() -> None:
    """Compiled, the mask is computed per element (fused into its multiply); eagerly, four elements per hash
    read as 16-bit slices. Sizes that are not multiples of four check the last, partial word."""
    from tunekit.methods._dropout import keep_mask

    compiled = torch.compile(keep_mask, dynamic=True)
    for shape, seed, dropped in (((3, 7, 5), -(2**62) - 12345, 3277), ((2, 64), 2**63 - 1, 32768), ((1, 1, 3), 7, 1)):
        like, seed_tensor = torch.empty(shape), torch.tensor(seed, dtype=torch.int64)
        eager = keep_mask(like, seed_tensor, dropped)
        assert torch.equal(compiled(like, seed_tensor, dropped), eager), shape
    wide = keep_mask(torch.empty(4096, 256), torch.tensor(99), 3277)
    assert abs(float(wide.float().mean()) - (1 - 3277 / 65536)) < 0.002  # 1M draws: standard error 0.0002


@needs_compiler
def test_a_compiled_run_trains_like_an_eager_one(tmp_path: Path, tiny_model_dir: Path) -> None:
    results = {}
    for setting in ("false", "true"):
        config = make_project(tmp_path / setting, tiny_model_dir, extra="  eval_every: 4\n")
        run_in_process(config, f"training.compile={setting}", "method.dropout=0.1")
        results[setting] = read_metrics(tmp_path / setting / "run")
        summary = (tmp_path / setting / "run" / "summary.json").read_text()
        assert f'"compiled": {setting}' in summary
    eager, compiled = results["false"], results["true"]
    assert [m["step"] for m in compiled] == [m["step"] for m in eager] == list(range(1, 9))
    for a, b in zip(eager, compiled):  # bf16 everywhere: fused kernels round differently, by little
        assert b["loss"] == pytest.approx(a["loss"], rel=5e-3)
    assert [m["val_loss"] for m in compiled if "val_loss" in m] == pytest.approx(
        [m["val_loss"] for m in eager if "val_loss" in m], rel=5e-3)
    assert compiled[-1]["loss"] < compiled[0]["loss"]


def test_auto_compiles_cpu_training_in_bf16_only() -> None:
    lora = get_method("lora")
    assert decide_compile("auto", CPU_BF16, lora)[0] is (cxx_compiler() is not None)
    assert decide_compile("auto", CPU_FP32, lora) == (False, "auto compiles bf16 training only (measured there)")
    assert decide_compile(False, CPU_BF16, lora) == (False, "training.compile=false")
    assert not get_method("dora").compiles


@pytest.mark.parametrize("name", methods_where(lambda cls: not cls.compiles))
def test_methods_that_do_not_compile_say_so(name: str) -> None:
    compiles, why = decide_compile("auto", CPU_BF16, get_method(name))
    assert not compiles and name in why
    with pytest.raises(ConfigError) as error:
        decide_compile(True, CPU_BF16, get_method(name))
    assert error.value.where == "training.compile"


def test_compile_true_without_a_compiler_is_a_config_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = make_project(tmp_path, tiny_model_dir)
    env = {k: v for k, v in os.environ.items() if k != "CXX"}
    env["PATH"] = str(Path(sys.executable).parent)  # the venv's tools, no C++ compiler
    result = tunekit("train", str(config), "training.compile=true", env=env)
    assert result.returncode == 2, result.stderr
    assert "training.compile" in result.stderr and "C++ compiler" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "adapter").exists()
