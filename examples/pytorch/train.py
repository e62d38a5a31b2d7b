"""A plain PyTorch training script on scikit-learn's 8x8 digits, with a DataLoader.

`tuner run examples/pytorch/study.toml` calls `train(trial)` for every trial; running this
file afterwards trains the study's winner with `tuner.best_config()`.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader, TensorDataset

import tuner
from tuner.workloads.datasets import load_dataset


def loaders(batch_size: int) -> tuple[DataLoader, DataLoader]:
    digits = load_dataset("digits")  # ships with scikit-learn: no download
    train_set = TensorDataset(
        torch.from_numpy(digits.train_images).flatten(1), torch.from_numpy(digits.train_labels)
    )
    val_set = TensorDataset(
        torch.from_numpy(digits.val_images).flatten(1), torch.from_numpy(digits.val_labels)
    )
    return DataLoader(train_set, batch_size, shuffle=True), DataLoader(val_set, batch_size=512)


def fit(config, epochs: int, device: torch.device, trial=None, direction=None) -> float:
    """Train an MLP of `config`'s width and dropout (the study's [params]) with its optimizer
    and schedule; return the validation accuracy. Under a `trial`, report each epoch and
    checkpoint it, and continue from the last checkpoint when the trial is a re-run (its
    worker died, or the study was interrupted)."""
    train_loader, val_loader = loaders(config.batch_size)
    width = config.params["width"]
    model = torch.nn.Sequential(
        torch.nn.Linear(64, width),
        torch.nn.ReLU(),
        torch.nn.Dropout(config.params["dropout"]),
        torch.nn.Linear(width, 10),
    ).to(device)
    # The optimizer and schedule, stepped as the configuration needs (clipping, plateau,
    # Schedule-Free's train/eval), so this loop works for whatever the study draws.
    stepper = config.build_stepper(model.parameters(), len(train_loader), epochs, direction)
    accuracy, start = 0.0, 1
    restored = trial.restore() if trial is not None else None
    if restored is not None:  # a re-run: continue after the epoch it had reached
        state, epoch = restored
        model.load_state_dict(state["model"])
        stepper.load_state_dict(state["stepper"])
        start = epoch + 1
    for epoch in range(start, epochs + 1):
        model.train()
        stepper.train()
        for images, labels in train_loader:
            stepper.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(images.to(device)), labels.to(device))
            loss.backward()
            stepper.step()
        model.eval()
        stepper.eval()
        with torch.no_grad():
            correct = sum(
                (model(images.to(device)).argmax(1) == labels.to(device)).sum().item()
                for images, labels in val_loader
            )
        accuracy = correct / len(val_loader.dataset)
        stepper.end_epoch(accuracy)
        if trial is not None:
            trial.report({"val_accuracy": accuracy, "train_loss": loss.item()}, epoch)
            trial.checkpoint({"model": model.state_dict(), "stepper": stepper.state_dict()}, epoch)
    return accuracy


def train(trial) -> None:
    """One trial: what `[workload] name = "train:train"` names."""
    fit(trial.config, trial.epochs, trial.device, trial, trial.direction)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Train with the study's best configuration.")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--storage", help="the study database (default: tuner's)")
    args = parser.parse_args()
    best = tuner.best_config("example-pytorch", storage=args.storage)
    print(
        f"best of the study: {best.optimizer}, lr {best.learning_rate:.3g}, "
        f"batch {best.batch_size}, {dict(best.params)}"
    )
    accuracy = fit(best, args.epochs, torch.device("cpu"))
    print(f"trained with the winner for {args.epochs} epochs: val_accuracy {accuracy:.3f}")
