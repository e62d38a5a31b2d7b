"""PyTorch Lightning with a tuner trial: a callback that reports, and the trial's optimizer.

In a training function::

    def train(trial):
        model = MyModule(trial.config)            # configure_optimizers below
        trainer = lightning.Trainer(
            max_epochs=trial.epochs,
            callbacks=[TunerCallback(trial)],
            **trainer_options(trial.config),
        )
        trainer.fit(model, train_loader, val_loader)

    class MyModule(lightning.LightningModule):
        def configure_optimizers(self):
            return configure_optimizers(self, self.config, monitor="val_loss")

Needs the extra ``tuner[lightning]``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning

from tuner.config import TrainingConfig
from tuner.execution.trial import Trial
from tuner.integrations import Reporter
from tuner.search.schedules import steps_per_epoch_scheduler


class TunerCallback(lightning.pytorch.Callback):
    """Report the logged metrics (the study's metric among them) after each validation epoch;
    when the pruner stops the trial, stop the Trainer and raise `optuna.TrialPruned` from
    ``trainer.fit`` once it has stopped."""

    def __init__(self, trial: Trial):
        self.reporter = Reporter(trial)

    def on_validation_end(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule
    ) -> None:
        if trainer.sanity_checking:  # Lightning's trial run of validation: no epoch yet
            return
        if self.reporter.report(trainer.callback_metrics, trainer.current_epoch + 1):
            trainer.should_stop = True

    def on_fit_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
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
