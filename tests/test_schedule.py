"""Our learning-rate schedules against transformers' own, step by step, including warmup and resume."""

import pytest
import torch
from transformers import get_scheduler

from tunekit.train.schedule import make_scheduler

TRANSFORMERS_NAME = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)


@pytest.mark.parametrize("name", ["cosine", "linear", "constant"])
@pytest.mark.parametrize(("warmup", "total"), [(0, 10), (3, 20), (1, 1)])
def test_schedules_match_transformers_at_every_step(name: str, warmup: int, total: int) -> None:
    ours_opt, theirs_opt = _optimizer(), _optimizer()
    ours = make_scheduler(ours_opt, name, warmup, total)
    theirs = get_scheduler(TRANSFORMERS_NAME[name], theirs_opt, num_warmup_steps=warmup, num_training_steps=total)
    for _ in range(total + 2):
        assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=1e-12, abs=1e-15)
        ours_opt.step(), theirs_opt.step()
        ours.step(), theirs.step()


def test_a_resumed_schedule_continues_where_it_stopped() -> None:
    first = make_scheduler(_optimizer(), "cosine", 2, 10)
    for _ in range(4):
        first.optimizer.step()
        first.step()
    resumed = make_scheduler(_optimizer(), "cosine", 2, 10)
    resumed.load_state_dict(first.state_dict())
    for _ in range(3):
        first.optimizer.step(), resumed.optimizer.step()
        first.step(), resumed.step()
        assert resumed.get_last_lr() == first.get_last_lr()
