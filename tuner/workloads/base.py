"""What a workload is: a factory of model, data and loss that the training loop drives.

A workload knows nothing of optimizers or studies. The training loop asks it for one epoch of
loss closures, steps the optimizer after each, and asks it to evaluate after each epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict

Direction = Literal["minimize", "maximize"]


class Options(BaseModel):
    """Base of every workload's options: typed, frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class TrialContext:
    """What a workload may depend on besides its options."""

    seed: int
    device: torch.device
    batch_size: int


class Trainable(Protocol):
    """One trial's model and data, ready on its device."""

    model: torch.nn.Module

    def epoch(self, generator: torch.Generator) -> Iterator[Callable[[], torch.Tensor]]:
        """Closures computing the training loss of each step of one epoch, in order."""
        ...

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch (schedules need it before training starts)."""
        ...

    def evaluate(self) -> dict[str, float]:
        """Validation metrics; the study's metric must be one of the keys."""
        ...


@dataclass(frozen=True)
class Workload:
    """A registry entry: how to build a Trainable and which metrics it reports."""

    name: str
    description: str
    options: type[Options]
    metrics: Mapping[str, Direction]
    default_metric: str
    build: Callable[[Any, TrialContext], Trainable]
    uses_batches: bool = True
    #: Checks run once before a study starts (data files present), so a study that cannot
    #: train fails at once with exit 2 instead of failing every trial.
    preflight: Callable[[Any], None] | None = None


class MiniBatchTask:
    """Supervised training on tensors resident on the trial's device, in shuffled mini-batches.

    Subclasses set the tensors, `model` and `batch_size`, and define `loss` and `evaluate`.
    """

    model: torch.nn.Module
    train_x: torch.Tensor
    train_y: torch.Tensor
    batch_size: int

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def steps_per_epoch(self) -> int:
        return -(-len(self.train_x) // self.batch_size)

    def epoch(self, generator: torch.Generator) -> Iterator[Callable[[], torch.Tensor]]:
        order = torch.randperm(len(self.train_x), generator=generator).to(self.train_x.device)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            yield lambda batch=batch: self.loss(
                self.model(self.train_x[batch]), self.train_y[batch]
            )
