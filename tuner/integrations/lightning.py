"""PyTorch Lightning with a tuner trial: a callback that reports, and the trial's optimizer.

In a training function::

    def train(trial):
        model = MyModule(trial.config)            # configure_optimizers below
        tuner_callback = TunerCallback(trial)
        trainer = lightning.Trainer(
            max_epochs=trial.epochs,
            callbacks=[tuner_callback],
            **trainer_options(trial.config),
        )
        # A re-run of the trial continues Lightning's loop from the trial's last checkpoint.
        trainer.fit(model, train_loader, val_loader, ckpt_path=tuner_callback.ckpt_path)

    class MyModule(lightning.LightningModule):
        def configure_optimizers(self):
            return configure_optimizers(self, self.config, monitor="val_loss")

Needs the extra ``tuner[lightning]``.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import lightning
import torch

from tuner.config import TrainingConfig
from tuner.execution.trial import Trial
from tuner.integrations import Reporter
from tuner.search.schedules import steps_per_epoch_scheduler


class TunerCallback(lightning.pytorch.Callback):
    """Report the logged metrics (the study's metric among them) after each validation epoch;
    when the pruner stops the trial, stop the Trainer and raise `optuna.TrialPruned` from
    ``trainer.fit`` once it has stopped.

    After each training epoch the Trainer's own checkpoint (model, optimizers, schedulers,
    loops) is saved as the trial's (``trial.checkpoint``); for a re-run of the trial,
    `ckpt_path` is that checkpoint as a file for ``trainer.fit(..., ckpt_path=...)``, so that
    Lightning's loop continues after the epoch it had reached (None for a fresh trial)."""

    def __init__(self, trial: Trial):
        self.reporter = Reporter(trial)
        self.ckpt_path: str | None = None
        restored = trial.restore()
        if restored is not None:
            folder = tempfile.mkdtemp(prefix="tuner-lightning-")
            self.ckpt_path = str(Path(folder) / "resume.ckpt")
            torch.save(restored[0], self.ckpt_path)

    def on_train_epoch_end(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule
    ) -> None:
        if self.reporter.stop is None:  # a stopped trial is not resumed
            # What Trainer.save_checkpoint writes, without the file: the trial keeps it.
            state = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            self.reporter.trial.checkpoint(state, trainer.current_epoch + 1)

    def on_validation_end(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule
    ) -> None:
        if trainer.sanity_checking:  # Lightning's trial run of validation: no epoch yet
            return
        if self.reporter.report(trainer.callback_metrics, trainer.current_epoch + 1):
            trainer.should_stop = True

    def on_fit_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        if self.ckpt_path is not None:  # read by now: the trial's own checkpoint remains
            shutil.rmtree(Path(self.ckpt_path).parent, ignore_errors=True)
        self.reporter.raise_stop()


def configure_optimizers(
    module: lightning.LightningModule,
    config: TrainingConfig,
    monitor: str,
    direction: Literal["minimize", "maximize"] = "minimize",
) -> dict[str, Any]:
    """What ``LightningModule.configure_optimizers`` returns for `config` (a trial's, or
    `tuner.best_config()`): its optimizer over the module's parameters, and its schedule
    stepped as tuner steps it (after every batch; ``plateau`` once per epoch on `monitor`).
    The schedule's length comes from the Trainer (``max_epochs``, batches per epoch)."""
    trainer = module.trainer
    optimizer = config.build_optimizer(p for p in module.parameters() if p.requires_grad)
    epochs = max(trainer.max_epochs or 1, 1)
    steps_per_epoch = max(math.ceil(trainer.estimated_stepping_batches / epochs), 1)
    scheduler = config.build_scheduler(optimizer, steps_per_epoch, epochs, direction)
    per_step = steps_per_epoch_scheduler(scheduler)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {
            "scheduler": scheduler,
            "interval": "step" if per_step else "epoch",
            "monitor": monitor,
        },
    }


def trainer_options(config: TrainingConfig) -> dict[str, Any]:
    """Trainer arguments the configuration decides: gradient clipping by norm."""
    if config.max_grad_norm is None:
        return {}
    return {"gradient_clip_val": config.max_grad_norm, "gradient_clip_algorithm": "norm"}
