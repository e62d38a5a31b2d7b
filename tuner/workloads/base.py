"""What a workload is: a factory of model, data and loss that the training loop drives.

A workload knows nothing of optimizers or studies. The training loop asks it for one epoch of
loss closures, steps the optimizer after each, and asks it to evaluate after each epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict

Direction = Literal["minimize", "maximize"]


class Options(BaseModel):
    """Base of every workload's options: typed, frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class TrialContext:
    """What a workload may depend on besides its options: ``params`` holds the user's own
    parameters the trial sampled (the study file's ``[params]``, tuner.search.params)."""

    seed: int
    device: torch.device
    batch_size: int
    params: Mapping[str, Any] = field(default_factory=dict)


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


#: Validation samples per forward pass: large enough to be quick, small enough for a CPU.
EVAL_BATCH = 1000


class MiniBatchTask:
    """Supervised training on tensors resident on the trial's device, in shuffled mini-batches.

    Subclasses set the tensors, `model` and `batch_size`, and define per-sample `sample_losses`
    and `validation_terms`. Per sample, so a stack of trials (tuner.execution.stacked) can mask the
    short last batch of an epoch and compute exactly what one trial computes alone.
    """

    model: torch.nn.Module
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    batch_size: int

    def sample_losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of each sample (shape: batch); the step minimises their mean."""
        raise NotImplementedError

    def validation_terms(
        self, outputs: torch.Tensor, targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per-sample values whose means over the validation set are the metrics."""
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.sample_losses(outputs, targets).mean()

    def steps_per_epoch(self) -> int:
        return -(-len(self.train_x) // self.batch_size)

    def epoch(self, generator: torch.Generator) -> Iterator[Callable[[], torch.Tensor]]:
        order = torch.randperm(len(self.train_x), generator=generator).to(self.train_x.device)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            yield lambda batch=batch: self.loss(
                self.model(self.train_x[batch]), self.train_y[batch]
            )

    @torch.no_grad()
    def evaluate(
        self, forward: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> dict[str, float]:
        """Validation metrics of `model`, or of `forward` (one trial's weights in a stack)."""
        forward = forward or self.model
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        for start in range(0, len(self.val_x), EVAL_BATCH):
            batch = slice(start, start + EVAL_BATCH)
            terms = self.validation_terms(forward(self.val_x[batch]), self.val_y[batch])
            for name, values in terms.items():
                sums[name] = sums.get(name, 0.0) + values.sum(dtype=torch.float64)
        self.model.train()
        return {name: float(total) / len(self.val_x) for name, total in sums.items()}
