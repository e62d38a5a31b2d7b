"""What a checkpoint costs a trial: per epoch, with checkpoints and without.

SimpleCNN on the offline 5,000 MNIST digits, Adam at lr 1e-3, batch 128, trained by tuner's
own loop (tuner.execution.train.TrialTraining) on the machine's device. Each epoch is timed
(its steps and its evaluation), then the checkpoint the worker writes after it, as it writes
it (TrialTraining.state_dict, copied, then written by tuner.storage.checkpoints.CheckpointFile
in the background: a temporary file, fsync, rename) into a temporary folder. Two costs: what
the training path pays (the copy, and any wait for the previous write), and the whole write
(which overlaps the next epoch). Runs with and without checkpoints alternate
(--repeat), so a loaded machine slows both alike; the medians are compared.

    nice -n 10 python bench/checkpoint_overhead.py [--epochs 3] [--repeat 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tests.specs import build_spec
from tuner.config import TrainingConfig
from tuner.execution.train import TrialTraining, pick_device
from tuner.storage.checkpoints import CheckpointFile

SPEC = build_spec(
    name="checkpoint-overhead",
    metric="val_loss",
    workload={"name": "cnn", "options": {"dataset": "mnist_5k"}},
    budget={"trials": 1, "epochs": 100},
)
CONFIG = TrainingConfig(
    optimizer="adam", target="torch.optim:Adam", learning_rate=1e-3, batch_size=128
)


def run(epochs: int, folder: Path | None) -> tuple[list[float], list[float], list[float], int]:
    """Seconds of each epoch, of the training path's share of each checkpoint after it and
    of its whole write (none without `folder`), and the checkpoint's size in bytes."""
    device = pick_device()
    training = TrialTraining(SPEC, CONFIG, seed=0, device=device)
    file = None if folder is None else CheckpointFile(folder, SPEC.name, 0, "cnn")
    epoch_seconds, checkpoint_seconds, write_seconds = [], [], []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        while not training.step():
            pass
        training.end_epoch()
        if device.type == "cuda":
            torch.cuda.synchronize()
        ended = time.perf_counter()
        epoch_seconds.append(ended - started)
        if file is not None:
            file.save(0, epoch, training.state_dict(), [], background=True)
            returned = time.perf_counter()
            checkpoint_seconds.append(returned - ended)
            file.wait()  # timed apart: in the worker the write overlaps the next epoch
            write_seconds.append(time.perf_counter() - ended)
    size = 0 if file is None else file.path.stat().st_size
    return epoch_seconds, checkpoint_seconds, write_seconds, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with_checkpoints, without, paid, written = [], [], [], []
    size = 0
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="tuner-bench-") as folder:
            epochs, checkpoints, writes, size = run(args.epochs, Path(folder))
        with_checkpoints += [e + c for e, c in zip(epochs, checkpoints, strict=True)]
        paid += checkpoints
        written += writes
        without += run(args.epochs, None)[0]
    plain, checkpointed = statistics.median(without), statistics.median(with_checkpoints)
    cost, write = statistics.median(paid), statistics.median(written)
    print(f"device: {pick_device()}, torch threads: {torch.get_num_threads()}")
    print(f"checkpoint: {size / 2**20:.2f} MiB; whole write {write * 1000:.1f} ms (median)")
    print(f"epoch without checkpoints: {plain:.3f} s (median of {len(without)})")
    print(f"epoch with a checkpoint:   {checkpointed:.3f} s (median of {len(with_checkpoints)})")
    print(
        f"checkpoint cost on the training path: {cost * 1000:.1f} ms = "
        f"{100 * cost / plain:.2f}% of an epoch (whole write: {100 * write / plain:.2f}%)"
    )


if __name__ == "__main__":
    main()
