"""Learning-rate schedules, built from torch.optim.lr_scheduler.

All but ``plateau`` step once per optimizer step; ``plateau`` (ReduceLROnPlateau) steps once
per epoch with the validation metric, which is why `steps_per_epoch` matters to the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Literal, TypeAlias

if TYPE_CHECKING:
    import torch
    from torch.optim import lr_scheduler

    Scheduler: TypeAlias = lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau


def _schedulers() -> ModuleType:
    """torch's lr_scheduler, imported when a schedule is built: the registry is data that
    reading a study (tuner status, the study note) uses without torch."""
    from torch.optim import lr_scheduler

    return lr_scheduler


#: Factor the LR falls to by the end of a run for step and exponential decay; cosine decays to 0.
FINAL_LR_FACTOR = 0.01
#: A warmup starts at this fraction of the LR (LinearLR's start_factor must be > 0).
WARMUP_START_FACTOR = 1e-3


@dataclass(frozen=True)
class Horizon:
    """What a schedule needs to know about the run it shapes."""

    total_steps: int
    warmup_fraction: float
    direction: Literal["minimize", "maximize"]


@dataclass(frozen=True)
class Schedule:
    """One registry entry: a one-line description (the study note) and its builder."""

    description: str
    build: Callable[[torch.optim.Optimizer, Horizon], Scheduler]


def _step(optimizer: torch.optim.Optimizer, run: Horizon) -> Scheduler:
    # Two drops by 10×, at a third and two thirds of the run: the classic ResNet recipe.
    milestones = [max(1, run.total_steps // 3), max(2, 2 * run.total_steps // 3)]
    return _schedulers().MultiStepLR(optimizer, milestones, gamma=FINAL_LR_FACTOR**0.5)


def _warmup_cosine(optimizer: torch.optim.Optimizer, run: Horizon) -> Scheduler:
    total_steps = run.total_steps
    warmup_steps = max(1, round(run.warmup_fraction * total_steps))
    schedulers = _schedulers()
    if warmup_steps >= total_steps:
        return schedulers.LinearLR(optimizer, WARMUP_START_FACTOR, 1.0, total_steps)
    return schedulers.SequentialLR(
        optimizer,
        [
            schedulers.LinearLR(optimizer, WARMUP_START_FACTOR, 1.0, warmup_steps),
            schedulers.CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps),
        ],
        milestones=[warmup_steps],
    )


#: The schedules a study file may name, in the order they are documented.
SCHEDULES: dict[str, Schedule] = {
    "constant": Schedule(
        "no decay",
        lambda optimizer, run: _schedulers().ConstantLR(optimizer, factor=1.0, total_iters=0),
    ),
    "step": Schedule("step decay", _step),
    "exponential": Schedule(
        "exponential decay",
        lambda optimizer, run: _schedulers().ExponentialLR(
            optimizer, gamma=FINAL_LR_FACTOR ** (1 / run.total_steps)
        ),
    ),
    "cosine": Schedule(
        "cosine decay",
        lambda optimizer, run: _schedulers().CosineAnnealingLR(optimizer, T_max=run.total_steps),
    ),
    "warmup_cosine": Schedule("linear warmup then cosine decay", _warmup_cosine),
    "plateau": Schedule(
        "ReduceLROnPlateau on the metric",
        lambda optimizer, run: _schedulers().ReduceLROnPlateau(
            optimizer, mode="min" if run.direction == "minimize" else "max", factor=0.5, patience=1
        ),
    ),
}


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    steps_per_epoch: int,
    epochs: int,
    warmup_fraction: float = 0.0,
    direction: Literal["minimize", "maximize"] = "minimize",
) -> Scheduler:
    """The LR schedule for `epochs` epochs of `steps_per_epoch` optimizer steps.

    Args:
        optimizer: the optimizer whose learning rate is scheduled.
        schedule: a key of `SCHEDULES`.
        steps_per_epoch: optimizer steps in one epoch.
        epochs: epochs in the whole run.
        warmup_fraction: share of all steps spent warming up linearly (warmup_cosine only).
        direction: whether the metric given to ``plateau`` improves downwards or upwards.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    horizon = Horizon(max(1, steps_per_epoch * epochs), warmup_fraction, direction)
    return SCHEDULES[schedule].build(optimizer, horizon)


def steps_per_epoch_scheduler(scheduler: Scheduler) -> bool:
    """Whether the scheduler steps after every optimizer step (all but ReduceLROnPlateau)."""
    return not isinstance(scheduler, _schedulers().ReduceLROnPlateau)
