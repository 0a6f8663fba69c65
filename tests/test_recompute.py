"""Selective checkpointing (training.checkpoint_keep): kept projections are not recomputed, gradients do
not change, the compiled graphs stay cacheable, and bad settings are config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from train_helpers import make_project, tunekit
from tunekit.errors import ConfigError
from tunekit.train.recompute import ATTENTION_PROJECTIONS, keep_outputs_of, projection_shapes, resolve_keep


class CountMatmuls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.mm.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def checkpointed_model(model_dir: Path, keep: list[str]) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    options: dict = {"use_reentrant": False}
    if keep:
        options["context_fn"] = keep_outputs_of(projection_shapes(model.model.layers[0], keep))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    return model.train()


def backward_matmuls_and_grads(model: torch.nn.Module) -> tuple[int, dict[str, torch.Tensor]]:
    ids = torch.randint(3, 500, (2, 16), generator=torch.Generator().manual_seed(0))
    loss = model(input_ids=ids, labels=ids).loss
    with CountMatmuls() as counter:
        loss.backward()
    return counter.count, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_kept_projections_are_not_recomputed_and_gradients_do_not_change(tiny_model_dir: Path) -> None:
    recomputed, expected = backward_matmuls_and_grads(checkpointed_model(tiny_model_dir, []))
    kept, got = backward_matmuls_and_grads(checkpointed_model(tiny_model_dir, list(ATTENTION_PROJECTIONS)))
    # 2 layers x (q, k, v, o): their forward matmuls are no longer replayed in backward
    assert recomputed - kept == 2 * 4
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=0, atol=0, msg=name)


def test_projections_of_the_same_shape_are_kept_together(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    layer = AutoModelForCausalLM.from_pretrained(tiny_model_dir).model.layers[0]
    # q_proj and o_proj are both 64 x 64 here: the policy sees only shapes, so it keeps both, and says so
    assert projection_shapes(layer, ["q_proj"]) == {(64, 64): ["o_proj", "q_proj"]}
    assert projection_shapes(layer, ["k_proj", "up_proj"]) == {
        (64, 32): ["k_proj", "v_proj"], (64, 128): ["gate_proj", "up_proj"]}


def test_a_keep_policy_does_not_stop_the_compiled_layers_from_being_cached(tiny_model_dir: Path) -> None:
    from torch._dynamo.utils import counters

    from tunekit.train.compile import cxx_compiler

    if cxx_compiler() is None:
        pytest.skip("no C++ compiler: inductor cannot build kernels")
    model = checkpointed_model(tiny_model_dir, list(ATTENTION_PROJECTIONS))
    for layer in model.model.layers:
        layer.compile(dynamic=True)
    torch._dynamo.reset()
    counters.clear()
    ids = torch.randint(3, 500, (2, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    assert counters["aot_autograd"]["autograd_cache_miss"] + counters["aot_autograd"]["autograd_cache_hit"] >= 1
    assert counters["aot_autograd"]["autograd_cache_bypass"] == 0


def test_auto_keeps_the_attention_projections_of_compiled_layers_only() -> None:
    names = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert resolve_keep("auto", names, compiled=True) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert resolve_keep("auto", names, compiled=False) == []
    assert resolve_keep(["gate_proj"], names, compiled=False) == ["gate_proj"]
    with pytest.raises(ConfigError) as error:
        resolve_keep(["qkv"], names, compiled=True)
    assert error.value.where == "training.checkpoint_keep" and "q_proj" in error.value.fix


@pytest.mark.parametrize(("overrides", "message"), [
    (["training.checkpoint_keep=[query]"], "['query'] not among this model's Linear layers"),
    (["training.checkpoint_keep=[q_proj]", "training.gradient_checkpointing=false"], "needs gradient checkpointing"),
])
def test_bad_checkpoint_keep_settings_stop_before_the_model_loads(
    tmp_path: Path, tiny_model_dir: Path, overrides: list[str], message: str
) -> None:
    result = tunekit("train", str(make_project(tmp_path, tiny_model_dir)), *overrides)
    assert result.returncode == 2, result.stderr
    assert "training.checkpoint_keep" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "adapter").exists()
