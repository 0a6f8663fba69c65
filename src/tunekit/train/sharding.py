"""Sharded data parallelism (FSDP2) for runs launched with an accelerate FSDP config, and what it rules out.

Why tunekit applies the sharding itself: accelerate shards only on GPU-type backends (its state turns an FSDP
plugin into FSDP for CUDA-like devices; on CPU the plugin is silently dropped and the run is plain DDP).
tunekit reads the plugin settings that `accelerate launch` exports (FSDP_*) and calls torch's `fully_shard`,
the engine accelerate itself calls, on each decoder layer and then the whole model, the same way on CPU
(gloo) and on GPUs (NCCL): one path, tested here. The variable that would make accelerate shard is cleared
before the Accelerator is made, so nothing is sharded twice.

DeepSpeed runs only through accelerate, which accepts it only on CUDA devices; on CPU it is refused here
with a message instead of failing inside the library (see the README's "Several processes" section).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from tunekit.errors import UserError

USE_FSDP = "ACCELERATE_USE_FSDP"
USE_DEEPSPEED = "ACCELERATE_USE_DEEPSPEED"


@dataclass(frozen=True)
class FsdpPlan:
    """What of accelerate's FSDP plugin tunekit honours. Layers are always the wrapping unit (accelerate's
    TRANSFORMER_BASED_WRAP with the model's decoder layer class); the dtypes come from tunekit's dtype policy
    (training.dtype), not accelerate's mixed_precision, so one policy decides them in every launcher."""

    reshard_after_forward: bool = True  # FULL_SHARD (ZeRO-3); false: SHARD_GRAD_OP (ZeRO-2)
    offload_params: bool = False


def _flag(env: Any, name: str, default: bool = False) -> bool:
    return str(env.get(name, str(default))).strip().lower() in ("1", "true", "yes")


def fsdp_plan(env: Any = os.environ) -> FsdpPlan | None:
    """The FSDP settings of this process's launch, or None when the run is not sharded."""
    if not _flag(env, USE_FSDP):
        return None
    version = str(env.get("FSDP_VERSION", "1"))
    if version != "2":
        raise UserError(f"FSDP version {version} in the accelerate config: tunekit shards with FSDP2 only",
                        where="accelerate config: fsdp_config.fsdp_version",
                        fix="set fsdp_version: 2 (accelerate config); FSDP1 is deprecated in torch")
    strategy = str(env.get("FSDP_SHARDING_STRATEGY", "")).upper()
    reshard = _flag(env, "FSDP_RESHARD_AFTER_FORWARD", default=True)
    if strategy in ("SHARD_GRAD_OP", "2"):
        reshard = False
    return FsdpPlan(reshard_after_forward=reshard, offload_params=_flag(env, "FSDP_OFFLOAD_PARAMS"))


def take_fsdp_plan(env: Any = os.environ) -> FsdpPlan | None:
    """fsdp_plan, and accelerate told not to shard on its own (it would wrap the sharded model again)."""
    plan = fsdp_plan(env)
    if plan is not None:
        env[USE_FSDP] = "false"
    return plan


def refuse_deepspeed(device_type: str, env: Any = os.environ) -> None:
    if not _flag(env, USE_DEEPSPEED):
        return
    if device_type != "cuda":
        raise UserError(
            "DeepSpeed needs CUDA GPUs: accelerate runs it only there (on CPU it would silently train without it)",
            where="accelerate config: distributed_type: DEEPSPEED",
            fix="on CPU use an FSDP config (distributed_type: FSDP, fsdp_version: 2) or plain DDP "
                "(`tunekit train --num-processes N`)",
        )
    raise UserError(
        "DeepSpeed is not supported by tunekit's training loop yet: its checkpoints and optimizer are DeepSpeed's "
        "own, and they have not been tested to resume exactly", where="accelerate config: distributed_type",
        fix="use FSDP (distributed_type: FSDP, fsdp_version: 2): the same ZeRO-3 sharding through torch",
    )


def check_method(method: Any, optimizer: str) -> None:
    """What cannot shard, refused before any weights load."""
    if optimizer == "adamw_bf16":
        raise UserError(
            "training.optimizer=adamw_bf16 keeps a rounding-error buffer per weight outside the parameters, which "
            "FSDP does not shard or gather", where="training.optimizer",
            fix="use training.optimizer=adamw (auto picks it under FSDP)",
        )
    if getattr(method, "prompt_learning", False):
        raise UserError(f"{method.name} trains virtual tokens outside the decoder layers, which FSDP would not "
                        "shard", where="method.name", fix="use lora, dora, ia3 or full under FSDP, or DDP")


def shard_model(root: torch.nn.Module, model: torch.nn.Module, layer_prefix: str, plan: FsdpPlan,
                compute_dtype: torch.dtype) -> int:
    """fully_shard each of `model`'s decoder layers, then `root`, the module training calls (the loss wrapper):
    what no layer holds (embeddings, final norm, output layer, tied or not) is gathered when its forward
    starts, since the loss code calls the decoder and the output layer separately, not the model's forward.
    Returns the number of layers. Parameters are gathered in the compute dtype, gradients reduced in fp32."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = base.get_submodule(layer_prefix)
    offload = plan.offload_params and torch.cuda.is_available()  # on CPU the weights are there already
    options = {"mp_policy": MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32),
               "reshard_after_forward": plan.reshard_after_forward,
               "offload_policy": CPUOffloadPolicy() if offload else OffloadPolicy()}
    for layer in layers:
        fully_shard(layer, **options)
    fully_shard(root, **options)
    return len(layers)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether any part of `model` is sharded (its layers are, when the loss wrapper is the FSDP root)."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())
