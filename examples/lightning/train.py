"""A PyTorch Lightning module on scikit-learn's 8x8 digits, tuned through the Lightning adapter.

`tuner run examples/lightning/study.toml` calls `train(trial)` for every trial; running this
file afterwards trains the study's winner with `tuner.best_config()`.
"""

from __future__ import annotations

import argparse

import lightning
import torch
from torch.utils.data import DataLoader, TensorDataset

import tuner
from tuner.integrations.lightning import TunerCallback, configure_optimizers, trainer_options
from tuner.workloads.datasets import load_dataset


class DigitsClassifier(lightning.LightningModule):
    """A small CNN whose channels (the study's [params]), optimizer and schedule come from a
    tuner configuration."""

    def __init__(self, config, direction: str = "maximize"):
        super().__init__()
        self.config, self.direction = config, direction
        channels = config.params["channels"]
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, channels, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(channels * 4 * 4, 10),
        )

    def training_step(self, batch, index):
        images, labels = batch
        loss = torch.nn.functional.cross_entropy(self.net(images), labels)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, index):
        images, labels = batch
        accuracy = (self.net(images).argmax(1) == labels).float().mean()
        self.log("val_accuracy", accuracy)

    def configure_optimizers(self):
        return configure_optimizers(self, self.config, "val_accuracy", self.direction)


def fit(config, epochs: int, callbacks=(), ckpt_path=None) -> float:
    """Train with `config` (from Lightning's checkpoint at `ckpt_path`, if given); return the
    last validation accuracy."""
    digits = load_dataset("digits")  # ships with scikit-learn: no download
    train_set = TensorDataset(
        torch.from_numpy(digits.train_images).unsqueeze(1), torch.from_numpy(digits.train_labels)
    )
    val_set = TensorDataset(
        torch.from_numpy(digits.val_images).unsqueeze(1), torch.from_numpy(digits.val_labels)
    )
    trainer = lightning.Trainer(
        max_epochs=epochs,
        callbacks=list(callbacks),
        accelerator="auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **trainer_options(config),
    )
    trainer.fit(
        DigitsClassifier(config),
        DataLoader(train_set, config.batch_size, shuffle=True),
        DataLoader(val_set, batch_size=512),
        ckpt_path=ckpt_path,
    )
    return float(trainer.callback_metrics["val_accuracy"])


def train(trial) -> None:
    """One trial: what `[workload] name = "train:train"` names."""
    # The callback reports, checkpoints each epoch, and gives a re-run of the trial (its
    # worker died, or it was interrupted) the checkpoint to continue from.
    callback = TunerCallback(trial)
    fit(trial.config, trial.epochs, [callback], callback.ckpt_path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Train with the study's best configuration.")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--storage", help="the study database (default: tuner's)")
    args = parser.parse_args()
    best = tuner.best_config("example-lightning", storage=args.storage)
    print(
        f"best of the study: {best.optimizer}, lr {best.learning_rate:.3g}, "
        f"batch {best.batch_size}, {dict(best.params)}"
    )
    accuracy = fit(best, args.epochs)
    print(f"trained with the winner for {args.epochs} epochs: val_accuracy {accuracy:.3f}")
