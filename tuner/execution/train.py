"""One trial's training loop: build, train epochs, evaluate, report, prune; stop on divergence.

Reads top to bottom like a training script. The loop reports the study's metric after every
epoch (step = epochs done) so the pruner, which reads intermediate values from storage,
compares trials across workers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch

from tuner.config import TrainingConfig
from tuner.spec import StudySpec
from tuner.study.results import is_confirmation_run
from tuner.workloads import TrialContext, build_trainable

#: A parameter norm above this is taken as divergence even before it overflows to inf.
EXPLODED_NORM = 1e10
#: A trial has diverged when an epoch's mean training loss lies more than this many times
#: |its first-step loss| above that first-step loss: Adam at lr 1e6 on Rosenbrock reaches
#: 7.4e18 from 4 without ever overflowing. The margin is wide because training losses may
#: rise for a while (a warmup, a momentum overshoot) and come back; 100x never does.
LOSS_GROWTH_LIMIT = 100.0


class TrialDiverged(Exception):
    """The loss or the parameters became NaN/inf or exploded; the message says when."""


def pick_device() -> torch.device:
    """The GPU where torch sees one, the CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def trial_seed(study_seed: int, trial_number: int) -> int:
    """A per-trial seed that differs between trials and is reproducible from the study seed."""
    return (study_seed * 1_000_003 + trial_number) % 2**31


def parameter_norm(parameters: Iterable[torch.Tensor]) -> float:
    """The L2 norm of all parameters together (what divergence is judged on)."""
    norms = [p.detach().norm() for p in parameters]
    return float(torch.stack(norms).norm()) if norms else 0.0


@dataclass(frozen=True)
class EpochResult:
    """What one epoch of one trial produced, before it is judged and reported.

    ``start_loss`` is the trial's loss at its very first step (before any update): where it
    started, for the divergence rule; NaN where it is not known (a user's own training loop
    reports epochs only), which leaves the loss-growth part of the rule out.
    """

    train_loss: float
    parameter_norm: float
    metrics: dict[str, float]
    learning_rate: float
    start_loss: float = math.nan


def divergence(result: EpochResult, metric: str, epoch: int) -> str | None:
    """Why an epoch's result shows the trial diverged (with the epoch and the loss), or None.

    The one rule for trials trained alone and stacked: the training loss, the parameter norm
    or the study's metric is NaN/inf; the parameter norm is above EXPLODED_NORM; or the mean
    training loss grew past its first-step loss by more than LOSS_GROWTH_LIMIT x |that loss|.
    """
    loss, start, norm = result.train_loss, result.start_loss, result.parameter_norm
    where = f"diverged in epoch {epoch}: mean training loss {loss:.4g}"
    if not math.isfinite(loss) or not math.isfinite(norm) or norm > EXPLODED_NORM:
        return f"{where}, parameter norm {norm:.4g}"
    if math.isfinite(start) and loss - start > LOSS_GROWTH_LIMIT * abs(start):
        return f"{where}, up from {start:.4g} at the first step"
    value = result.metrics[metric]
    if not math.isfinite(value):
        return f"{where}, {metric} {value}"
    return None


@dataclass
class TrainingRecord:
    """What a trial's training produced, recorded whatever the outcome."""

    epochs_run: int = 0
    curve: list[dict[str, Any]] = field(default_factory=list)


def close_epoch(
    trial: optuna.Trial,
    spec: StudySpec,
    record: TrainingRecord,
    epoch: int,
    result: EpochResult,
) -> float:
    """Judge, record and report one finished epoch; return the study's metric.

    Shared by one-trial and batched execution, so a trial is judged, recorded, reported and
    pruned the same way whichever ran it.

    Raises:
        TrialDiverged: the epoch shows divergence (see `divergence`).
        optuna.TrialPruned: the pruner stopped the trial (never after the last epoch, never a
            confirmation run: tuner.study.results.is_confirmation_run).
    """
    reason = divergence(result, spec.metric, epoch)
    if reason is not None:
        raise TrialDiverged(reason)
    value = result.metrics[spec.metric]
    record.epochs_run = epoch
    record.curve.append(
        {
            "epoch": epoch,
            "train_loss": result.train_loss,
            "learning_rate": result.learning_rate,
            **result.metrics,
        }
    )
    trial.report(value, epoch)
    # After the last epoch there is nothing left to save: keep the finished result. A
    # confirmation run is there to measure its final value: never pruned.
    if (
        epoch < spec.budget.epochs
        and not is_confirmation_run(trial.user_attrs)
        and trial.should_prune()
    ):
        raise optuna.TrialPruned(f"pruned after epoch {epoch}: {spec.metric} = {value:.4g}")
    return value


class TrialTraining:
    """One trial's model, optimizer and schedule, advanced one optimizer step at a time.

    `train` runs it to the end; a batched worker interleaves it with stacked trials when no
    vectorized rule reproduces the trial's optimizer.
    """

    def __init__(self, spec: StudySpec, config: TrainingConfig, seed: int, device: torch.device):
        torch.manual_seed(seed)
        self.spec, self.config, self.device = spec, config, device
        self.trainable = build_trainable(
            spec.workload,
            TrialContext(
                seed=seed, device=device, batch_size=config.batch_size or 1, params=config.params
            ),
        )
        self.stepper = config.build_stepper(
            self.trainable.model.parameters(),
            self.trainable.steps_per_epoch(),
            spec.budget.epochs,
            spec.direction,
        )
        self.order = torch.Generator().manual_seed(seed)
        self._steps: Iterator[Callable[[], torch.Tensor]] | None = None
        self._start_loss: torch.Tensor | None = None  # on the device, read once per epoch

    def step(self) -> bool:
        """Take one optimizer step; True when it was the last of an epoch."""
        if self._steps is None:  # an epoch begins
            self.stepper.train()
            self._steps = iter(self.trainable.epoch(self.order))
            # Losses stay on the device and are summed there: reading each one back would
            # synchronise a GPU every step.
            self._loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
            self._step_count = 0
        step_loss = next(self._steps)
        self.stepper.zero_grad()
        loss = step_loss()
        loss.backward()
        if self._start_loss is None:
            self._start_loss = loss.detach().double()
        self.stepper.step()
        self._loss_sum += loss.detach()
        self._step_count += 1
        return self._step_count == self.trainable.steps_per_epoch()

    def state_dict(self) -> dict[str, Any]:
        """Everything the next epoch depends on, for a checkpoint between epochs: the model,
        the optimizer and schedule, the data order's and torch's random states, and the
        first-step loss the divergence rule compares with."""
        return {
            "model": self.trainable.model.state_dict(),
            "stepper": self.stepper.state_dict(),
            "order": self.order.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "start_loss": None if self._start_loss is None else float(self._start_loss),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's `state_dict`, at the start of the next epoch."""
        self.trainable.model.load_state_dict(state["model"])
        self.stepper.load_state_dict(state["stepper"])
        self.order.set_state(state["order"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        start = state["start_loss"]
        self._start_loss = None if start is None else torch.tensor(start, dtype=torch.float64)

    def end_epoch(self) -> EpochResult:
        """Evaluate after the epoch's last step (and step a per-epoch schedule)."""
        self._steps = None
        self.stepper.eval()
        train_loss = float(self._loss_sum) / max(self._step_count, 1)
        norm = parameter_norm(self.trainable.model.parameters())
        metrics = self.trainable.evaluate()
        value = metrics[self.spec.metric]
        self.stepper.end_epoch(value)
        lr = self.stepper.optimizer.param_groups[0]["lr"]
        return EpochResult(train_loss, norm, metrics, lr, float(self._start_loss))


def train(
    trial: optuna.Trial,
    spec: StudySpec,
    config: TrainingConfig,
    seed: int,
    device: torch.device,
    record: TrainingRecord,
) -> float:
    """Train one trial and return the study's metric after the last epoch.

    Raises:
        optuna.TrialPruned: the pruner stopped the trial after some epoch.
        TrialDiverged: the trial diverged (see `divergence`).
    """
    training = TrialTraining(spec, config, seed, device)
    value = math.nan
    for epoch in range(1, spec.budget.epochs + 1):
        while not training.step():
            pass
        value = close_epoch(trial, spec, record, epoch, training.end_epoch())
    return value
