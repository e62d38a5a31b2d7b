"""One trial's training loop: build, train epochs, evaluate, report, prune; divergence fails.

Reads top to bottom like a training script. The loop reports the study's metric after every
epoch (step = epochs done) so the pruner, which reads intermediate values from storage,
compares trials across workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch

from tuner.config import TrainingConfig
from tuner.schedules import steps_per_epoch_scheduler
from tuner.spec import StudySpec
from tuner.workloads import TrialContext, build_trainable

#: A parameter norm above this is taken as divergence even before it overflows to inf.
EXPLODED_NORM = 1e10


class TrialDiverged(Exception):
    """The loss or the parameters became NaN/inf or exploded; the message says when."""


@dataclass
class TrainingRecord:
    """What a trial's training produced, recorded whatever the outcome."""

    epochs_run: int = 0
    curve: list[dict[str, Any]] = field(default_factory=list)


def pick_device() -> torch.device:
    """The GPU where torch sees one, the CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def trial_seed(study_seed: int, trial_number: int) -> int:
    """A per-trial seed that differs between trials and is reproducible from the study seed."""
    return (study_seed * 1_000_003 + trial_number) % 2**31


def _parameter_norm(model: torch.nn.Module) -> float:
    norms = [p.detach().norm() for p in model.parameters()]
    return float(torch.stack(norms).norm()) if norms else 0.0


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
        TrialDiverged: the loss or the parameters stopped being finite.
    """
    torch.manual_seed(seed)
    trainable = build_trainable(
        spec.workload, TrialContext(seed=seed, device=device, batch_size=config.batch_size or 1)
    )
    parameters = [p for p in trainable.model.parameters() if p.requires_grad]
    optimizer = config.build_optimizer(parameters)
    epochs = spec.budget.epochs
    scheduler = config.build_scheduler(
        optimizer, trainable.steps_per_epoch(), epochs, spec.direction
    )
    per_epoch_scheduler = not steps_per_epoch_scheduler(scheduler)
    order = torch.Generator().manual_seed(seed)

    value = math.nan
    for epoch in range(1, epochs + 1):
        if config.schedule_free:
            optimizer.train()
        # Losses stay on the device and are summed there: reading each one back would
        # synchronise a GPU every step.
        loss_sum, steps = torch.zeros((), device=device, dtype=torch.float64), 0
        for step_loss in trainable.epoch(order):
            optimizer.zero_grad(set_to_none=True)
            loss = step_loss()
            loss.backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            if not per_epoch_scheduler:
                scheduler.step()
            loss_sum += loss.detach()
            steps += 1
        if config.schedule_free:
            optimizer.eval()

        train_loss = float(loss_sum) / max(steps, 1)
        norm = _parameter_norm(trainable.model)
        if not math.isfinite(train_loss) or not math.isfinite(norm) or norm > EXPLODED_NORM:
            raise TrialDiverged(
                f"diverged in epoch {epoch}: mean training loss {train_loss:.4g}, "
                f"parameter norm {norm:.4g}"
            )
        metrics = trainable.evaluate()
        value = metrics[spec.metric]
        if not math.isfinite(value):
            raise TrialDiverged(f"diverged in epoch {epoch}: {spec.metric} is {value}")
        if per_epoch_scheduler:
            scheduler.step(value)
        record.epochs_run = epoch
        record.curve.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "learning_rate": optimizer.param_groups[0]["lr"],
                **metrics,
            }
        )
        trial.report(value, epoch)
        # After the last epoch there is nothing left to save: keep the finished result.
        if epoch < epochs and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {spec.metric} = {value:.4g}")
    return value
