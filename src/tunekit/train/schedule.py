"""Learning-rate schedules: warmup, then linear decay, cosine decay or constant.

The same formulas as transformers' get_linear/cosine/constant_schedule_with_warmup (checked against them in
tests/test_schedule.py), written here because importing them loads transformers.trainer_utils, which imports
peft and bitsandbytes: ~50 MB more resident in a full fine-tuning process that uses neither.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

ScheduleName = Literal["cosine", "linear", "constant"]


def lr_factor(name: ScheduleName, step: int, warmup: int, total: int) -> float:
    """The learning rate's multiplier before optimizer step `step + 1` (0-based `step`)."""
    if step < warmup:
        return step / max(1, warmup)
    if name == "constant":
        return 1.0
    if name == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def make_scheduler(
    optimizer: torch.optim.Optimizer, name: ScheduleName, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(name, step, warmup, total))
