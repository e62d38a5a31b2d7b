"""`Stepper`: a configuration's optimizer and schedule, stepped as tuner steps them.

A loop written once must work for every configuration a study can draw: gradient clipping
when it is on, a schedule stepped after every optimizer step except ``plateau`` (stepped once
an epoch, with the metric), Schedule-Free's ``train()``/``eval()`` switch, Lookahead. The
Lightning and Hugging Face adapters let their frameworks do it; a plain PyTorch loop calls
this, as tuner's own loop does (tuner.execution.train)::

    stepper = trial.config.build_stepper(model.parameters(), len(loader), trial.epochs)
    for epoch in range(1, trial.epochs + 1):
        stepper.train()                  # before the epoch's steps
        for inputs, labels in loader:
            stepper.zero_grad()
            loss_fn(model(inputs), labels).backward()
            stepper.step()               # clip, optimizer step, per-step schedule
        stepper.eval()                   # before evaluating
        val_loss = evaluate(model)
        stepper.end_epoch(val_loss)      # plateau steps on the metric
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

import torch

from tuner.search.schedules import steps_per_epoch_scheduler

if TYPE_CHECKING:
    from tuner.config import TrainingConfig


class Stepper:
    """One configuration's optimizer and schedule over `params` (its ``optimizer`` and
    ``scheduler`` attributes are there for checkpoints and logging)."""

    def __init__(
        self,
        config: TrainingConfig,
        params: Iterable[torch.nn.Parameter],
        steps_per_epoch: int,
        epochs: int,
        direction: Literal["minimize", "maximize"] | None = None,
    ):
        self.config = config
        self.parameters = [p for p in params if p.requires_grad]
        self.optimizer = config.build_optimizer(self.parameters)
        # None: the configuration's own direction where it has one (`best_config()`'s).
        given = () if direction is None else (direction,)
        self.scheduler = config.build_scheduler(self.optimizer, steps_per_epoch, epochs, *given)
        self.per_step = steps_per_epoch_scheduler(self.scheduler)

    def zero_grad(self) -> None:
        """Clear the gradients before the next ``backward()``."""
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        """After ``backward()``: clip the gradients' norm (when the configuration clips),
        step the optimizer, and step a per-step schedule."""
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        self.optimizer.step()
        if self.per_step:
            self.scheduler.step()

    def train(self) -> None:
        """Before an epoch's steps: Schedule-Free's training mode (nothing for others)."""
        if self.config.schedule_free:
            self.optimizer.train()

    def eval(self) -> None:
        """Before evaluating: Schedule-Free's evaluation weights (nothing for others)."""
        if self.config.schedule_free:
            self.optimizer.eval()

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's and the schedule's state, for a checkpoint."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's `state_dict`."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def end_epoch(self, metric: float) -> None:
        """At an epoch's end, with its validation metric: ``plateau`` steps on it (a
        non-finite metric is no evidence of a plateau); other schedules stepped already."""
        if not self.per_step and math.isfinite(metric):
            self.scheduler.step(metric)
