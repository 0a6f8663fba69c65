"""torch.compile (inductor) for the decoder layers, during training steps only.

Why: in eager PyTorch every norm, rotary embedding, activation, mask and dtype cast is its own pass over
memory, and gradient checkpointing replays them all in backward. Inductor fuses them into a few C++ loops,
folds the checkpointed recompute into the compiled backward, and keeps fewer activations. Measured on the
benchmark's LoRA run (SmolLM2-135M, 30 steps, same rows, warm cache): 675-696 useful tokens/s against
528-537 eager; QLoRA +8%, full fine-tuning +17% (docs/benchmarks.md).

The decoder layers are compiled, and the output layer's loss pieces (`compiled_head_loss`). The layers
are identical, so one graph (forward and backward, dynamic in batch and length) serves all of them: ~20 s
the first time on a machine, then read from inductor's cache in ~2 s. Validation and generation run eager
(`eager()`): a no-grad graph and generation's KV cache would each be another compilation for little gain.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from typing import Any

import torch

from tunekit.devices import DeviceInfo
from tunekit.errors import ConfigError
from tunekit.train.loss import HeadLoss, head_loss_sum


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would use (it compiles its CPU kernels with one)."""
    for name in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if name and shutil.which(name):
            return name
    return None


def decide_compile(setting: bool | str, device: DeviceInfo, method: Any) -> tuple[bool, str]:
    """(compile?, why), before any model loads. `auto` compiles where it was measured to help: CPU training
    in a reduced-precision dtype with a C++ compiler present. `true` insists, and says what is missing."""
    if setting is False:
        return False, "training.compile=false"
    problem = None
    if not method.compiles:
        problem = f"method '{method.name}' does not train under torch.compile"
    elif device.device.type == "cpu" and cxx_compiler() is None:
        problem = "no C++ compiler found (inductor needs one for CPU kernels; install g++)"
    if setting is True:
        if problem:
            raise ConfigError(problem, where="training.compile", fix="set training.compile=auto or false")
        return True, "training.compile=true"
    if problem:
        return False, problem
    if device.device.type != "cpu":
        return False, "auto compiles on CPU only (measured there); set training.compile=true to try it here"
    if device.dtype == torch.float32:
        return False, "auto compiles bf16 training only (measured there)"
    return True, "auto: CPU training in " + str(device.dtype).removeprefix("torch.")


def compile_layers(model: torch.nn.Module, layer_prefix: str, *, fall_back: bool) -> int:
    """Compile each decoder layer in place (PEFT's adapters inside them included); returns how many.
    With `fall_back`, a toolchain that fails to build kernels makes Dynamo run those layers eagerly (with a
    warning) instead of stopping the run: `auto` must never be worse than not compiling."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = base.get_submodule(layer_prefix)
    if fall_back:
        torch._dynamo.config.suppress_errors = True
    for layer in layers:
        layer.compile(dynamic=True)  # batch and length change every step: one graph for all of them
    return len(layers)


def compiled_head_loss() -> HeadLoss:
    """One piece of the output layer's loss (loss.head_loss_sum) under torch.compile. Eagerly, the logits'
    cast to fp32, log-softmax, pick and their backward are ~8 passes over positions x vocabulary (128 x 49k
    here); compiled they are two fused loops around the output layer's matmuls. Measured on a profiled
    compiled LoRA run of the benchmark (6 steps): the step's CPU time fell by 8% (4.67 to 4.30 s)."""
    return torch.compile(head_loss_sum, dynamic=True)  # the last piece of each batch is shorter


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Run compiled modules eagerly inside this block (validation, generation during training)."""
    with torch.compiler.set_stance("force_eager"):
        yield
