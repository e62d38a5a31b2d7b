"""A tiny Vision Transformer on scikit-learn's 8x8 digits, trained by the Hugging Face Trainer.

The model is built from a config (nothing is downloaded). `tuner run
examples/transformers/study.toml` calls `train(trial)` for every trial; running this file
afterwards trains the study's winner with `tuner.best_config()`.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

import tuner
from tuner.integrations.transformers import TunerCallback, optimizers, training_arguments
from tuner.workloads.datasets import load_dataset


def examples(images: np.ndarray, labels: np.ndarray) -> list[dict]:
    pixels = torch.from_numpy(images).unsqueeze(1)
    return [{"pixel_values": p, "labels": int(y)} for p, y in zip(pixels, labels, strict=True)]


def accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def fit(config, epochs: int, callbacks=(), seed: int = 0, checkpoints=False, resume_from=None):
    """Train a ViT with `config` (its dropout from the study's [params]), saving a checkpoint
    each epoch if asked and continuing from the Trainer's checkpoint folder `resume_from` if
    given; return the last evaluation accuracy."""
    digits = load_dataset("digits")  # ships with scikit-learn: no download
    train_set = examples(digits.train_images, digits.train_labels)
    torch.manual_seed(seed)
    model = ViTForImageClassification(
        ViTConfig(
            image_size=8,
            patch_size=2,
            num_channels=1,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=10,
            hidden_dropout_prob=config.params["hidden_dropout_prob"],
        )
    )
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            num_train_epochs=epochs,
            eval_strategy="epoch",
            # Under a trial each epoch's checkpoint is kept as the trial's (TunerCallback).
            save_strategy="epoch" if checkpoints else "no",
            save_total_limit=1,
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=seed,
            **training_arguments(config),
        )
        steps_per_epoch = -(-len(train_set) // config.batch_size)
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_set,
            eval_dataset=examples(digits.val_images, digits.val_labels),
            compute_metrics=accuracy,
            optimizers=optimizers(config, model, steps_per_epoch, epochs),
            callbacks=list(callbacks),
        )
        trainer.train(resume_from_checkpoint=resume_from)
        # The last epoch's evaluation (evaluating again would report one epoch too many).
        evaluations = [entry for entry in trainer.state.log_history if "eval_accuracy" in entry]
        return evaluations[-1]["eval_accuracy"]


def train(trial) -> None:
    """One trial: what `[workload] name = "train:train"` names."""
    # The callback reports, keeps each epoch's checkpoint, and gives a re-run of the trial (its
    # worker died, or it was interrupted) the checkpoint to continue from.
    callback = TunerCallback(trial)
    fit(trial.config, trial.epochs, [callback], trial.seed, True, callback.resume_from)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Train with the study's best configuration.")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--storage", help="the study database (default: tuner's)")
    args = parser.parse_args()
    best = tuner.best_config("example-transformers", storage=args.storage)
    print(
        f"best of the study: {best.optimizer}, lr {best.learning_rate:.3g}, "
        f"batch {best.batch_size}, {dict(best.params)}"
    )
    result = fit(best, args.epochs)
    print(f"trained with the winner for {args.epochs} epochs: eval_accuracy {result:.3f}")
