"""A trial's checkpoints as its worker keeps them: written between epochs, resumed from by
the trial's re-run, deleted (or kept for the best) once the trial has finished.

Built-in workloads are checkpointed by the worker (tuner.execution.worker), training functions
and scripts by their own ``trial.checkpoint`` and ``trial.restore`` (tuner.execution.trial);
both go through `TrialCheckpoints`. The files themselves: tuner.storage.checkpoints.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner.execution.train import TrainingRecord
from tuner.spec import StudySpec
from tuner.storage import optuna_internals as internals
from tuner.storage.checkpoints import (
    Checkpoint,
    CheckpointFile,
    checkpoint_folder,
    discard_kept,
    origin_of,
)
from tuner.storage.rdb import rdb_backend
from tuner.study.results import RESUMED_FROM_ATTR

logger = logging.getLogger(__name__)


def trial_origin(trial: optuna.Trial) -> int:
    """The first trial of `trial`'s line (itself unless it re-runs one): its checkpoint and
    its seed are that trial's."""
    return origin_of(trial.number, internals.claimed_system_attrs(trial))


def workload_identity(spec: StudySpec) -> str:
    """What a checkpoint must have been written by to be resumed: the workload or command."""
    return spec.workload.name or " ".join(spec.workload.command or [])


class TrialCheckpoints:
    """One trial's checkpoints: `due` says after which epochs to write one, `save` writes it,
    `load` and `resumed` take a re-run back to the line's last one, `before_tell` and
    `after_tell` clean up once the trial has ended.

    With ``[execution] checkpoint_every = 0`` nothing is written or read.
    """

    def __init__(self, trial: optuna.Trial, spec: StudySpec):
        self.trial, self.spec = trial, spec
        self.every = spec.execution.checkpoint_every
        self.keep_best = spec.execution.keep_best_checkpoint and self.every > 0
        origin = trial_origin(trial)
        self.rerun = origin != trial.number
        self.file = CheckpointFile(
            checkpoint_folder(trial.storage, trial.study.study_name),
            trial.study.study_name,
            origin,
            workload_identity(spec),
        )

    def due(self, epoch: int) -> bool:
        """Whether to checkpoint after `epoch` epochs: every `every` epochs before the last
        (a finished trial resumes nothing), and after the last one to keep the best's."""
        if self.every == 0:
            return False
        if epoch >= self.spec.budget.epochs:
            return self.keep_best
        return epoch % self.every == 0

    def save(
        self, epoch: int, state: Any, record: TrainingRecord, background: bool = False
    ) -> bool:
        """Write `state` as the checkpoint after `epoch` epochs (False if not written); in
        the `background` for tuner's own loop (CheckpointFile.save)."""
        if self.every == 0:
            return False
        return self.file.save(self.trial.number, epoch, state, record.curve, background)

    def load(self) -> Checkpoint | None:
        """The line's last checkpoint for a re-run; None for a first run, or when there is
        none usable (then a warning says why)."""
        if not self.rerun or self.every == 0:
            return None
        return self.file.load()

    def resumed(self, checkpoint: Checkpoint, record: TrainingRecord) -> None:
        """The trial continues from `checkpoint`: its learning curve goes back into `record`
        and is reported again, so the pruner sees the epochs already trained, and the trial
        records where it resumed from."""
        record.curve[:] = checkpoint.curve
        record.epochs_run = checkpoint.epoch
        metric = self.spec.metric
        for point in checkpoint.curve:
            self.trial.report(point[metric], point["epoch"])
        rdb_backend(self.trial.storage).set_trial_user_attr(
            internals.trial_id(self.trial),
            RESUMED_FROM_ATTR,
            {"trial": checkpoint.trial, "epoch": checkpoint.epoch},
        )
        logger.info(
            "trial %d resumes trial %d after epoch %d",
            self.trial.number,
            checkpoint.trial,
            checkpoint.epoch,
        )

    def keeps(self, state: TrialState, diverged: bool) -> bool:
        """Whether the trial's checkpoint is kept once it ends this way (the best's may be)."""
        return self.keep_best and state is TrialState.COMPLETE and not diverged

    def before_tell(self, state: TrialState, diverged: bool) -> None:
        """Move a checkpoint that may be the best's among the kept ones before the trial is
        told, so that no other worker's `after_tell` sees it told and its file not there yet."""
        if self.keeps(state, diverged):
            self.file.keep(self.trial.number)

    def after_tell(self, study: optuna.Study, state: TrialState, diverged: bool) -> None:
        """The trial was told `state`: delete its checkpoint; or, keeping the best's, delete
        the kept checkpoints of the finished trials that are not the study's best."""
        if not self.keeps(state, diverged):
            self.file.discard()
            return
        try:
            best = study.best_trial.number
        except ValueError:  # no feasible complete trial (yet)
            return
        # Only trials this read saw COMPLETE lose their file: one told meanwhile compares
        # itself once told, so two workers never delete each other's best.
        told = {trial.number for trial in study.get_trials(False, states=(TrialState.COMPLETE,))}
        discard_kept(self.trial.storage, study.study_name, told - {best})
