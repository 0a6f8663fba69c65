"""The training loop, on accelerate: one CPU, one GPU, or several processes (DDP, FSDP, DeepSpeed)
with the same code. Loss is averaged over supervised tokens of the whole optimizer step, across
micro-batches and processes, so gradient accumulation and data parallelism give the same update."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from tunekit.devices import release_free_memory
from tunekit.errors import UserError
from tunekit.train.batches import Features, batch_order, collate
from tunekit.train.checkpoint import TrainState
from tunekit.train.loss import HeadLoss, supervised_loss_sum
from tunekit.train.token_cache import row_lengths


class TrainingStopped(UserError):
    """The run stopped on purpose (diverged, interrupted); the last good checkpoint is kept."""

    exit_code = 1


class SupervisedLM(torch.nn.Module):
    """Wraps the model so that DDP sees the forward that computes the loss (hooks stay intact)."""

    def __init__(self, model: torch.nn.Module, direct: bool, head_loss: HeadLoss | None = None):
        super().__init__()
        self.model = model
        self.direct = direct
        self.head_loss = head_loss

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> Any:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        loss_sum, count = supervised_loss_sum(self.model, batch, direct=self.direct, head_loss=self.head_loss)
        return loss_sum, torch.tensor(count, dtype=torch.long)


@dataclass
class StepResult:
    loss: float
    supervised: int
    tokens: int
    grad_norm: float | None


class StepRunner:
    """Runs optimizer steps: micro-batch selection, accumulation, clipping, the NaN guard."""

    def __init__(self, accelerator: Any, wrapped: Any, optimizer: Any, scheduler: Any, features: list[Features],
                 *, batch_size: int, grad_accum: int, seed: int, group_by_length: bool, pad_id: int,
                 max_grad_norm: float | None, autocast: Any):
        self.acc, self.wrapped, self.opt, self.sched = accelerator, wrapped, optimizer, scheduler
        self.features, self.batch_size, self.grad_accum = features, batch_size, grad_accum
        self.seed, self.group_by_length, self.pad_id = seed, group_by_length, pad_id
        self.max_grad_norm, self.autocast = max_grad_norm, autocast
        self.lengths = row_lengths(features)  # without reading the rows
        self.per_step = grad_accum * accelerator.num_processes
        self._epoch_batches: dict[int, list[list[int]]] = {}
        self.in_backward = False  # set by step_in_backward(): the optimizer already stepped during backward
        self.sharded = False  # the model is sharded with FSDP (sharding.py)
        # Return the heap's free pages inside each step too (before backward and the optimizer), not only
        # between steps (30-step runs, same data): full fine-tuning 50-80 MB lower per step; LoRA's peak
        # 1049-1153 MB against 1158-1367 without. With eager layers it cost LoRA ~12% of its speed (the
        # returned pages fault back in during backward); with compiled layers nothing measurable (639-640
        # against 638-644 tokens/s), for ~50 MB. Each method says whether it wants it
        # (Method.trim_heap_within_step).
        self.trim_within_step = False

    def steps_per_epoch(self) -> int:
        return max(1, len(self._batches(0)) // self.per_step)

    def _batches(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epoch_batches:
            self._epoch_batches = {epoch: batch_order(
                self.lengths, self.batch_size, self.seed, epoch, self.group_by_length
            )}
        return self._epoch_batches[epoch]

    def step(self, state: TrainState) -> StepResult:
        batches = self._batches(state.epoch)
        group = batches[state.batch_in_epoch : state.batch_in_epoch + self.per_step]
        if len(group) < self.per_step and len(batches) >= self.per_step:  # drop the ragged end
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            return self.step(state)
        mine = group[self.acc.process_index :: self.acc.num_processes] or group[:1]
        micro = [collate([self.features[i] for i in idx], self.pad_id) for idx in mine]
        local_count = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
        global_count = int(self.acc.reduce(torch.tensor(local_count, device=self.acc.device), reduction="sum"))
        # DDP averages gradients over processes; scale so the result is the mean over all tokens.
        scale = self.acc.num_processes / max(global_count, 1)
        loss_total = torch.zeros((), device=self.acc.device)
        for k, batch in enumerate(micro):
            batch = on_device(batch, self.acc.device)
            sync = k == len(micro) - 1
            if self.sharded:  # FSDP reduces gradients in backward; only the last micro-batch's backward does
                self.wrapped.set_requires_gradient_sync(sync)
                context = _null()
            else:
                context = self.acc.no_sync(self.wrapped) if not sync else _null()
            with context, self.autocast:
                loss_sum, _ = self.wrapped(batch["input_ids"], batch["attention_mask"], batch["labels"])
            if self.in_backward and not torch.isfinite(loss_sum):  # backward would update the weights
                raise _diverged(float(loss_sum.detach()) / max(global_count, 1), state)
            if self.trim_within_step:  # the forward's freed temporaries, before backward's peak
                release_free_memory()
            self.acc.backward(loss_sum * scale)
            loss_total += loss_sum.detach().float()
        loss = float(self.acc.reduce(loss_total, reduction="sum")) / max(global_count, 1)
        if not math.isfinite(loss):
            self.opt.zero_grad(set_to_none=True)
            raise _diverged(loss, state)
        grad_norm = None
        if self.max_grad_norm:
            params = [p for p in self.wrapped.parameters() if p.requires_grad]
            grad_norm = float(self.acc.clip_grad_norm_(params, self.max_grad_norm))
        if not self.in_backward:
            if self.trim_within_step:  # backward's, before the optimizer's fp32 working copies
                release_free_memory()
            self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        tokens = sum(int(b["attention_mask"].sum()) for b in micro)
        tokens = int(self.acc.reduce(torch.tensor(tokens, device=self.acc.device), "sum"))
        state.step += 1
        state.batch_in_epoch += self.per_step
        state.tokens += tokens
        state.supervised_tokens += global_count
        if state.batch_in_epoch + self.per_step > len(batches):
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        release_free_memory()
        return StepResult(loss, global_count, tokens, grad_norm)


def _diverged(loss: float, state: TrainState) -> TrainingStopped:
    return TrainingStopped(
        f"loss became {loss} at step {state.step + 1}; weights were not updated",
        fix="lower training.learning_rate or check the data; resume from the last checkpoint",
    )


def can_step_in_backward(runner: StepRunner) -> bool:
    """The whole step's gradient must be final within one backward: no clipping (the global norm is known
    only at its end), no accumulation, one process (DDP reduces gradients in buckets after the hooks)."""
    return (not runner.max_grad_norm and runner.grad_accum == 1 and runner.acc.num_processes == 1
            and not runner.sharded)


def step_in_backward(optimizer: Any, params: list[torch.nn.Parameter]) -> None:
    """Update each weight as soon as backward has finished its gradient, then drop that gradient.

    Why: full fine-tuning otherwise holds a gradient for every weight at the end of backward (4 bytes per
    parameter: 540 MB for SmolLM2-135M, a fifth of the run's memory); here only the gradients in flight
    exist. It is the same AdamW update in a different order: a weight changes only after everything in
    backward that reads it has run (its gradient is complete only then)."""

    def update(param: torch.Tensor) -> None:
        optimizer.step()  # every other gradient is None at this moment, so this updates `param` alone
        param.grad = None

    for param in params:
        param.register_post_accumulate_grad_hook(update)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def on_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch where the model is (batches are built on the CPU; a no-op there)."""
    return {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}


@torch.no_grad()
def validation_loss(acc: Any, wrapped: Any, features: list[Features], pad_id: int, autocast: Any,
                    batch_size: int, lockstep: bool = False) -> float | None:
    """Mean loss over supervised tokens, in batches of the training batch size: no larger activations than
    training already needed, so evaluation does not set the run's peak memory."""
    if not features:
        return None
    wrapped.eval()
    lengths = row_lengths(features)
    order = sorted(range(len(features)), key=lambda i: lengths[i])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    total, count = torch.zeros((), device=acc.device), torch.zeros((), dtype=torch.long, device=acc.device)
    mine = batches[acc.process_index :: acc.num_processes]
    # A sharded model's forward is collective: every process runs as many as the busiest, extra ones uncounted.
    rounds = math.ceil(len(batches) / acc.num_processes) if lockstep else len(mine)
    for k in range(rounds):
        batch = on_device(collate([features[i] for i in (mine[k] if k < len(mine) else batches[0])], pad_id),
                          acc.device)
        with autocast:
            loss_sum, n = wrapped(batch["input_ids"], batch["attention_mask"], batch["labels"])
        if k < len(mine):
            total += loss_sum.float()
            count += n
        # Batches come shortest first, so each needs larger blocks than the holes the last one left: without
        # this the heap grew by every batch (a LoRA run's validation rose from 0.79 to 1.16 GB, its peak).
        release_free_memory()
    wrapped.train()
    total, count = acc.reduce(total, "sum"), acc.reduce(count, "sum")
    return float(total) / max(int(count), 1)


class Throughput:
    """Tokens per second of training steps alone: evaluation and checkpoint time are not in it. The first step
    of a process also traces and compiles the model (training.compile) or builds its matmul kernels, a fixed
    cost of a few seconds; `steady_tokens_per_s` leaves it out, as MFU figures conventionally do."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.tokens = 0
        self.train_seconds = 0.0
        self.first_step: tuple[int, float] | None = None  # (tokens, seconds)

    def add(self, tokens: int, seconds: float) -> None:
        if self.first_step is None:
            self.first_step = (tokens, seconds)
        self.tokens += tokens
        self.train_seconds += seconds

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.train_seconds, 1e-9)

    @property
    def first_step_seconds(self) -> float | None:
        return self.first_step[1] if self.first_step else None

    @property
    def steady_tokens_per_s(self) -> float | None:
        """Tokens per second after this process's first step; None until there are two steps."""
        if self.first_step is None or self.train_seconds <= self.first_step[1]:
            return None
        return (self.tokens - self.first_step[0]) / (self.train_seconds - self.first_step[1])
