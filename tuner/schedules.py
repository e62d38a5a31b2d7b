"""Learning-rate schedules, built from torch.optim.lr_scheduler.

All but ``plateau`` step once per optimizer step; ``plateau`` (ReduceLROnPlateau) steps once
per epoch with the validation metric, which is why `steps_per_epoch` matters to the caller.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.optim import lr_scheduler

SCHEDULES = ("constant", "step", "exponential", "cosine", "warmup_cosine", "plateau")
Schedule = Literal["constant", "step", "exponential", "cosine", "warmup_cosine", "plateau"]

#: Factor the LR falls to by the end of a run for step and exponential decay; cosine decays to 0.
FINAL_LR_FACTOR = 0.01
#: A warmup starts at this fraction of the LR (LinearLR's start_factor must be > 0).
WARMUP_START_FACTOR = 1e-3


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    steps_per_epoch: int,
    epochs: int,
    warmup_fraction: float = 0.0,
    direction: Literal["minimize", "maximize"] = "minimize",
) -> lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau:
    """The LR schedule for `epochs` epochs of `steps_per_epoch` optimizer steps.

    Args:
        optimizer: the optimizer whose learning rate is scheduled.
        schedule: one of `SCHEDULES`.
        steps_per_epoch: optimizer steps in one epoch.
        epochs: epochs in the whole run.
        warmup_fraction: share of all steps spent warming up linearly (warmup_cosine only).
        direction: whether the metric given to ``plateau`` improves downwards or upwards.
    """
    total_steps = max(1, steps_per_epoch * epochs)
    if schedule == "constant":
        return lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if schedule == "step":
        # Two drops by 10×, at a third and two thirds of the run: the classic ResNet recipe.
        milestones = [max(1, total_steps // 3), max(2, 2 * total_steps // 3)]
        return lr_scheduler.MultiStepLR(optimizer, milestones, gamma=FINAL_LR_FACTOR**0.5)
    if schedule == "exponential":
        return lr_scheduler.ExponentialLR(optimizer, gamma=FINAL_LR_FACTOR ** (1 / total_steps))
    if schedule == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if schedule == "warmup_cosine":
        warmup_steps = max(1, round(warmup_fraction * total_steps))
        if warmup_steps >= total_steps:
            return lr_scheduler.LinearLR(optimizer, WARMUP_START_FACTOR, 1.0, total_steps)
        return lr_scheduler.SequentialLR(
            optimizer,
            [
                lr_scheduler.LinearLR(optimizer, WARMUP_START_FACTOR, 1.0, warmup_steps),
                lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps),
            ],
            milestones=[warmup_steps],
        )
    if schedule == "plateau":
        mode = "min" if direction == "minimize" else "max"
        return lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.5, patience=1)
    raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")


def steps_per_epoch_scheduler(
    scheduler: lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau,
) -> bool:
    """Whether the scheduler steps after every optimizer step (all but ReduceLROnPlateau)."""
    return not isinstance(scheduler, lr_scheduler.ReduceLROnPlateau)
