"""MiniMind's cosine learning-rate schedule, as a scheduler DeepSpeed checkpoints with the engine."""

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def minimind_lr_factor(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Multiplier of the peak rate at optimizer ``step``: ``0.1 + 0.45 * (1 + cos(pi * step / total))``.

    That is MiniMind's cosine from lr_max down to lr_max/10; with ``warmup_steps`` the first
    steps ramp linearly up to the cosine's value instead.
    """
    cosine = 0.1 + 0.45 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    if step < warmup_steps:
        return cosine * (step + 1) / warmup_steps
    return cosine


def minimind_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    """A ``LambdaLR`` applying ``minimind_lr_factor``; hand it to ``deepspeed.initialize``."""
    return LambdaLR(optimizer, lambda step: minimind_lr_factor(step, total_steps, warmup_steps))


def follow_schedule(scheduler: LambdaLR) -> None:
    """Set each parameter group's rate to what ``scheduler`` gives its current step.

    A resumed optimizer holds the rate the saved run's schedule gave; when the total number of
    steps changed, the first resumed step would use it and the next steps the new schedule.
    """
    for group, base_lr, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas,
                                      strict=True):
        group["lr"] = base_lr * factor(scheduler.last_epoch)
