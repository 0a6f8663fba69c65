"""The optimizers a run can use, and the choice between them.

- `adamw`: torch's fused AdamW, fp32 state (8 bytes per trained weight).
- `adamw_8bit`: bitsandbytes' AdamW8bit (2 bytes per weight); on CPU its step is unfused and slow.
- `adamw_bf16`: `CompactAdamW` below: bf16 moments (4 bytes per weight), and the trained Linear and
  embedding weights themselves in bf16 with a bf16 compensation term, so they hold ~16 significant bits.
  `auto` picks it where the method trains the model's own weights (`Method.trains_base_weights`), in bf16
  on one process, and `adamw` elsewhere.

Written by hand because no installed library has a fused low-precision AdamW step on CPU (bitsandbytes'
CPU path took 0.41 s for the 29M-weight embedding alone, against 0.013 s for torch's fused AdamW; torchao's
needs torch.compile). This one runs torch's own fused AdamW kernel on fp32 slices of a million weights, so
the arithmetic is torch's and its temporaries stay small.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch

from tunekit.devices import release_free_memory

CHUNK = 1 << 20  # weights per fused update: 16 MB of fp32 temporaries, and few Python round trips
STATE_DTYPE = torch.bfloat16


def resolve_optimizer(kind: str, trains_base_weights: bool, compute_dtype: torch.dtype) -> str:
    """`auto`: bf16 weights and state where whole weight matrices (the model's own, which are large) train
    in bf16 on one process. Several processes keep fp32 AdamW: FSDP flattens each layer's weights into one
    tensor of one dtype."""
    if kind != "auto":
        return kind
    one_process = int(os.environ.get("WORLD_SIZE", "1")) == 1
    if trains_base_weights and compute_dtype == torch.bfloat16 and one_process:
        return "adamw_bf16"
    return "adamw"


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float,
                   kind: str = "adamw", seed: int = 0,
                   residuals: dict[torch.nn.Parameter, torch.Tensor] | None = None) -> torch.optim.Optimizer:
    """AdamW, fused where torch has a fused kernel for the device (CPU and CUDA do): one pass over each
    parameter and its state. The for-loop version allocates temporaries as large as the parameter (for
    full fine-tuning of SmolLM2, ~220 MB at its 28M-weight embedding, on top of the gradients) and runs
    many small parallel regions."""
    if kind == "adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    if kind == "adamw_bf16":
        return CompactAdamW(params, lr=lr, weight_decay=weight_decay, seed=seed, residuals=residuals)
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None  # None: torch's own choice
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)


def by_device_and_dtype(tensors: Iterable[torch.Tensor]) -> list[list[torch.Tensor]]:
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.device, tensor.dtype), []).append(tensor)
    return list(groups.values())


def flat_views(like: list[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One zeroed buffer in `dtype` on the device of `like`, and a view of it shaped like each tensor there.
    Long-lived tensors allocated one by one spread over the heap, between each step's transient ones, and
    the free space around them cannot be handed back; gradients allocated during backward also landed
    between each layer's freed activations (~13 MB more heap a layer for SmolLM2-135M)."""
    buffer = torch.zeros(sum(t.numel() for t in like), dtype=dtype, device=like[0].device)
    views, offset = [], 0
    for tensor in like:
        views.append(buffer[offset : offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()
    return buffer, views


def store_trained_weights_in(model: torch.nn.Module, dtype: torch.dtype) -> dict[torch.nn.Parameter, torch.Tensor]:
    """Trainable Linear and input-embedding weights to `dtype`, for `CompactAdamW`: matmuls read them
    without a cast, and their gradients are `dtype` too (for a tied embedding, the output layer's
    gradient and the lookup's are then 54 MB each for SmolLM2-135M instead of 108). The embedding's output
    is then bf16, and so is the residual stream, as in a bf16 model (and in torchtune's and LitGPT's bf16
    full fine-tuning): the layer inputs that activation checkpointing keeps take half the memory (70 MB
    fewer at 4 x 512 tokens). Measured against an fp32 residual stream, the 30-step benchmark's
    validation loss was the same (1.1583 against 1.1584, scored by TRL) and the peak 115 MB lower.

    Returns each converted weight's rounding error, for the optimizer's compensation to start from. It
    matters: a weight that starts on the bf16 grid moves only once its updates add up to half a bf16 step
    (hundreds of fine-tuning steps), while an fp32 weight cast to bf16 for each matmul, sitting anywhere
    between grid points, flips as soon as its updates cross the nearest midpoint. Measured on SmolLM2-135M,
    full fine-tuning: without it the loss after 12 steps was 1.85 against fp32 AdamW's 1.65."""
    weights: dict[torch.nn.Parameter, None] = {}  # ordered, and a tied weight once
    for module in model.modules():
        weight = getattr(module, "weight", None)
        trained = isinstance(module, torch.nn.Linear | torch.nn.Embedding) and weight is not None
        if trained and weight.requires_grad and weight.dtype != dtype:
            weights[weight] = None
    residuals = {}
    for same in by_device_and_dtype(weights):  # one buffer each for the weights and their errors
        (_, stored), (_, errors) = flat_views(same, dtype), flat_views(same, dtype)
        for weight, rounded, error in zip(same, stored, errors, strict=True):
            rounded.copy_(weight.data)
            error.copy_(weight.data - rounded.float())
            weight.data, residuals[weight] = rounded, error
    # Loaded weights are views of the weights file's memory map, and the map stays while any of them
    # lives: the norms alone kept 415 MB of file pages resident. Copies free it.
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.dtype != dtype:
            tensor.data = tensor.data.clone()
    return residuals


class CompactAdamW(torch.optim.Optimizer):
    """AdamW with bf16 moments, and compensated bf16 weights.

    - A bf16 weight keeps the rounding error of its last update in a bf16 `compensation`, and the next
      update starts from weight + compensation (Kahan's summation, to ~16 significant bits). The pair
      takes the 4 bytes an fp32 weight would; what it saves is the fp32 gradient and the per-forward cast,
      while updates smaller than bf16's resolution (2^-8 of the weight; fine-tuning steps are ~2^-11)
      still add up instead of rounding away. An int8 compensation (1/256ths of the bf16 spacing) was
      tried: it saves 135 MB for SmolLM2-135M, but its fixed resolution loses part of updates close to
      it (~13% error for weights near 0.5 at lr 2e-5, against 4% here), and the 30-step benchmark's
      validation loss rose from 1.343 to 1.374.
    - The first moment is rounded to nearest: it moves by 10% of the gradient each step.
    - The second moment is rounded stochastically (up with the probability of the dropped fraction):
      with beta2 = 0.999 it moves by 0.1% a step, below half a bf16 step, so rounding to nearest would
      freeze it once the early steps have passed. Its random bits come from a generator seeded by the run's
      seed, the step and the weight's position: a resumed run draws the same ones.
    - fp32 weights (norms) are updated in place; their moments are bf16 too.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, seed: int = 0,
                 residuals: dict[torch.nn.Parameter, torch.Tensor] | None = None):
        """`residuals`: each bf16 weight's rounding error when it was converted (`store_trained_weights_in`),
        so training starts from the exact weights."""
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.seed = seed
        self.flat_gradients = True  # off when each gradient is dropped inside backward (step_in_backward)
        self._gradient_buffers: list[torch.Tensor] = []
        self._init_flat_states(list(residuals or {}))
        for param, residual in (residuals or {}).items():
            self.state[param]["compensation"].copy_(residual)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        position = 0
        for group in self.param_groups:
            for param in group["params"]:
                position += 1
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    self._init_state(param, state)
                state["step"] += 1
                generator = torch.Generator(device=param.device)
                generator.manual_seed(_mix(self.seed, int(state["step"]), position))
                self._update(param, state, group, generator)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Gradients live in one zeroed buffer per dtype, allocated once (`flat_views`), and backward adds
        into them. Allocated during backward instead, the heap grew 300-500 MB by the end of backward."""
        if not self.flat_gradients:
            super().zero_grad(set_to_none=set_to_none)
            return
        if not self._gradient_buffers:
            self._gradient_buffers = self._assign_flat_gradients()
        for buffer in self._gradient_buffers:
            buffer.zero_()

    def _assign_flat_gradients(self) -> list[torch.Tensor]:
        buffers = []
        for same in by_device_and_dtype(p for group in self.param_groups for p in group["params"]):
            buffer, views = flat_views(same, same[0].dtype)
            for param, view in zip(same, views, strict=True):
                param.grad = None  # frees a gradient allocated the usual way first
                param.grad = view
            buffers.append(buffer)
        return buffers

    def _init_flat_states(self, params: list[torch.Tensor]) -> None:
        """The compensated weights' moments and compensations, as views of one buffer per kind (`flat_views`)."""
        for same in by_device_and_dtype(params):
            kinds = {"exp_avg": STATE_DTYPE, "exp_avg_sq": STATE_DTYPE, "compensation": same[0].dtype}
            views = {name: flat_views(same, dtype)[1] for name, dtype in kinds.items()}
            for i, param in enumerate(same):
                self.state[param]["step"] = torch.tensor(0.0)
                for name in kinds:
                    self.state[param][name] = views[name][i]

    def _init_state(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        state["step"] = torch.tensor(0.0)
        state["exp_avg"] = torch.zeros_like(param, dtype=STATE_DTYPE, memory_format=torch.contiguous_format)
        state["exp_avg_sq"] = torch.zeros_like(param, dtype=STATE_DTYPE, memory_format=torch.contiguous_format)
        if param.dtype != torch.float32:
            state["compensation"] = torch.zeros_like(param, memory_format=torch.contiguous_format)

    def _update(self, param: torch.Tensor, state: dict[str, Any], group: dict[str, Any],
                generator: torch.Generator) -> None:
        weight, grad = param.data.view(-1), param.grad.reshape(-1)
        exp_avg, exp_avg_sq = state["exp_avg"].view(-1), state["exp_avg_sq"].view(-1)
        compensation = state.get("compensation")
        compensation = compensation.view(-1) if compensation is not None else None
        beta1, beta2 = group["betas"]
        # The count is made on the CPU (`_init_state`; it also seeds the rounding); the kernel wants it by the weight.
        step = state["step"].to(weight.device)
        for start in range(0, weight.numel(), CHUNK):
            part = slice(start, start + CHUNK)
            # An fp32 weight is updated in place; a bf16 one as an fp32 copy of weight + compensation.
            weight32 = weight[part] if compensation is None else exact_weight(weight[part], compensation[part])
            avg32, sq32 = exp_avg[part].float(), exp_avg_sq[part].float()
            torch._fused_adamw_(  # the kernel torch.optim.AdamW(fused=True) runs
                [weight32], [grad[part].float()], [avg32], [sq32], [], [step],
                lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                amsgrad=False, maximize=False,
            )
            exp_avg[part].copy_(avg32)
            exp_avg_sq[part].copy_(stochastic_round(sq32, generator))
            if compensation is not None:
                rounded = weight32.to(param.dtype)
                weight[part].copy_(rounded)
                compensation[part].copy_(weight32.sub_(rounded.float()))  # exact: the two are close

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch casts loaded state to each weight's dtype; the moments and compensation stay bf16."""
        super().load_state_dict(state_dict)
        for param, state in self.state.items():
            for key in ("exp_avg", "exp_avg_sq"):
                state[key] = state[key].to(STATE_DTYPE)
            if "compensation" in state:
                state["compensation"] = state["compensation"].to(param.dtype)

    def finish(self) -> None:
        """Ends training: each compensated weight becomes fp32 weight + compensation (the trained model is
        saved at the precision it trained at). Gradients and moments go first, and the heap is trimmed,
        so the fp32 weights take the memory they left: finishing never needs more than a step did. The
        last checkpoint holds the state."""
        for group in self.param_groups:
            for param in group["params"]:
                param.grad = None
        self._gradient_buffers = []
        for state in self.state.values():
            state.pop("exp_avg", None)
            state.pop("exp_avg_sq", None)
        release_free_memory()
        for param in list(self.state):
            compensation = self.state.pop(param).get("compensation")
            if compensation is None:
                continue
            rounded, flat = param.data.view(-1), compensation.view(-1)
            exact = torch.empty(rounded.shape, dtype=torch.float32, device=rounded.device)
            for start in range(0, rounded.numel(), CHUNK):
                part = slice(start, start + CHUNK)
                exact[part] = exact_weight(rounded[part], flat[part])
            param.data = exact.view(param.shape)
        release_free_memory()


def exact_weight(rounded: torch.Tensor, compensation: torch.Tensor) -> torch.Tensor:
    """fp32 weight from its bf16 rounding and the bf16 compensation."""
    return rounded.float().add_(compensation)


def stochastic_round(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """fp32 to bf16, rounding up with probability equal to the fraction that bf16 drops: unbiased. Adds 16
    random bits below bf16's last bit and truncates (for negative numbers this rounds the magnitude, which
    is the same thing). Overwrites `values`."""
    noise = random_int16(values.numel(), generator, values.device).to(torch.int32).bitwise_and_(0xFFFF)
    bits = values.view(torch.int32)
    bits.add_(noise).bitwise_and_(-65536)
    return values.to(torch.bfloat16)  # exact: the low 16 bits are zero


def random_int16(n: int, generator: torch.Generator | None = None, device: torch.device | None = None) -> torch.Tensor:
    """n values uniform over -32768..32767, as 16-bit slices of 64-bit draws (four per draw): torch's CPU
    generator costs per draw, not per bit."""
    words = torch.randint(-(2**63), 2**63 - 1, (-(-n // 4),), dtype=torch.int64, device=device,
                          generator=generator)
    return words.view(torch.int16)[:n]


def _mix(seed: int, step: int, position: int) -> int:
    """One generator seed per (run seed, step, weight): distinct for any run shorter than 2^20 weights."""
    return ((seed * 1_000_003 + step) * (1 << 20) + position) & ((1 << 63) - 1)
