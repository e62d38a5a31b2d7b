"""Hugging Face ``Trainer`` with a tuner trial: a callback that reports evaluation metrics,
and the trial's optimizer and schedule for ``Trainer(optimizers=...)``.

In a training function::

    def train(trial):
        args = TrainingArguments(
            ..., num_train_epochs=trial.epochs, eval_strategy="epoch",
            **training_arguments(trial.config),
        )
        tuner_callback = TunerCallback(trial)
        trainer = Trainer(
            model=model, args=args, train_dataset=..., eval_dataset=...,
            optimizers=optimizers(trial.config, model, steps_per_epoch, trial.epochs),
            callbacks=[tuner_callback],
        )
        # A re-run of the trial continues the Trainer from the trial's last checkpoint.
        trainer.train(resume_from_checkpoint=tuner_callback.resume_from)

With ``save_strategy="epoch"`` (and ``save_total_limit=1``), each checkpoint folder the Trainer
saves is kept as the trial's checkpoint.

The study's metric is named as the Trainer names it (``eval_loss``, ``eval_accuracy``).
Needs the extra ``tuner[transformers]``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from tuner.config import TrainingConfig
from tuner.execution.trial import Trial
from tuner.integrations import Reporter

if TYPE_CHECKING:
    from tuner.search.schedules import Scheduler


class TunerCallback(TrainerCallback):
    """Report each evaluation's metrics (step = evaluations so far: epochs with
    ``eval_strategy="epoch"``); when the pruner stops the trial, stop training and raise
    `optuna.TrialPruned` from ``trainer.train()`` once it has stopped."""

    def __init__(self, trial: Trial):
        self.reporter = Reporter(trial)
        self.evaluations = 0
        #: For ``trainer.train(resume_from_checkpoint=...)``: the folder of the Trainer's
        #: checkpoint a re-run of the trial continues from, or None for a fresh trial.
        self.resume_from: str | None = None
        restored = trial.restore()
        if restored is not None:
            files, self.evaluations = restored
            self.resume_from = tempfile.mkdtemp(prefix="tuner-transformers-")
            for name, content in files.items():
                (Path(self.resume_from) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(self.resume_from) / name).write_bytes(content)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Keep the checkpoint folder the Trainer just saved as the trial's checkpoint."""
        if self.reporter.stop is not None:  # a stopped trial is not resumed
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        files = {
            str(path.relative_to(folder)): path.read_bytes()
            for path in folder.rglob("*")
            if path.is_file()
        }
        self.reporter.trial.checkpoint(files, self.evaluations)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.evaluations += 1
        if self.reporter.report(metrics or {}, self.evaluations):
            control.should_training_stop = True

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.resume_from is not None:  # read by now: the trial's own checkpoint remains
            shutil.rmtree(self.resume_from, ignore_errors=True)
        self.reporter.raise_stop()


def training_arguments(config: TrainingConfig) -> dict[str, Any]:
    """``TrainingArguments`` the configuration decides: its batch size, and its clipping
    (none when off: the Trainer clips at norm 1.0 unless told otherwise)."""
    options: dict[str, Any] = {"max_grad_norm": config.max_grad_norm or 0.0}
    if config.batch_size is not None:
        options["per_device_train_batch_size"] = config.batch_size
    return options


def optimizers(
    config: TrainingConfig, model: torch.nn.Module, steps_per_epoch: int, epochs: int
) -> tuple[torch.optim.Optimizer, Scheduler]:
    """``Trainer(optimizers=...)`` for `config` (a trial's, or `tuner.best_config()`).

    Raises:
        ValueError: the schedule is ``plateau``, which needs the metric every epoch; the
            Trainer steps its scheduler after every optimizer step without one.
    """
    if config.schedule == "plateau":
        raise ValueError(
            "schedule 'plateau' needs the metric each epoch, which the Hugging Face Trainer "
            "does not give its scheduler: leave plateau out of [search] schedules"
        )
    optimizer = config.build_optimizer(p for p in model.parameters() if p.requires_grad)
    return optimizer, config.build_scheduler(optimizer, steps_per_epoch, epochs)
