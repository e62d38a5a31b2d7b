"""Trial-epochs per second for the mnist_cnn workload on one device, three ways, in one run:

- one trial per worker: `TrialTraining` (library Adam, data resident on the device);
- fractional packing: P processes on the same device, one trial each (what a fractional
  `gpus_per_trial` gives under Ray);
- batched: `StackedTrials` with K Adam trials of different learning rates, for each K, in
  float32 and, with --bf16, under bf16 autocast; with --compile, also with the stacked step's
  loss compiled by torch.compile.

Training and the validation after each epoch only: no study database, so the figures
compare ways of using the device. Each row times --steps optimizer steps after --warmup steps
and converts them to trial-epochs.

    python bench/gpu_throughput.py [--dataset mnist] [--ks 8,32,64,128] [--processes 4,16]
        [--batch-size 128] [--steps 100] [--bf16] [--compile]

Without a GPU it runs on the CPU (use --dataset digits or mnist_5k, small K): a check that
every path runs, not a GPU figure.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

STUDY = Path(__file__).parent.parent / "studies" / "mnist_cnn.toml"


def bench_spec(dataset: str) -> Any:
    from tuner.spec import load_spec

    return load_spec(STUDY, [f"workload.options.dataset={dataset!r}", "budget.epochs=1000"])


def adam(learning_rate: float, batch_size: int) -> Any:
    from tuner.config import TrainingConfig

    return TrainingConfig(
        optimizer="adam",
        target="torch.optim:Adam",
        learning_rate=learning_rate,
        batch_size=batch_size,
    )


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def advance(training: Any) -> None:
    """One step of a trial trained alone, validating when an epoch ends."""
    if training.step():
        training.end_epoch()


def timed_steps(step: Callable[[], Any], device: torch.device, warmup: int, steps: int) -> float:
    """Seconds for `steps` calls of `step` after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    synchronise(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronise(device)
    return time.perf_counter() - started


def one_trial(dataset: str, batch_size: int, device: torch.device, warmup: int, steps: int):
    """Trial-steps/s of one trial trained alone, and its steps per epoch."""
    from tuner.execution.train import TrialTraining

    training = TrialTraining(bench_spec(dataset), adam(1e-3, batch_size), 0, device)
    seconds = timed_steps(lambda: advance(training), device, warmup, steps)
    per_epoch = training.trainable.steps_per_epoch()
    return steps / seconds, per_epoch


def _packed_process(arguments: tuple, barrier, results) -> None:
    dataset, batch_size, device, warmup, steps, index = arguments
    from tuner.execution.train import TrialTraining

    if device.type == "cpu":
        torch.set_num_threads(1)  # the processes share the cores, as Ray workers would
    training = TrialTraining(bench_spec(dataset), adam(1e-3, batch_size), index, device)
    for _ in range(warmup):
        advance(training)
    synchronise(device)
    barrier.wait()
    started = time.perf_counter()
    for _ in range(steps):
        advance(training)
    synchronise(device)
    results.put((started, time.perf_counter()))


def packed(processes: int, dataset: str, batch_size: int, device, warmup: int, steps: int):
    """Trial-steps/s of P processes each training one trial on the same device at once."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(
            target=_packed_process,
            args=((dataset, batch_size, device, warmup, steps, index), barrier, results),
        )
        for index in range(processes)
    ]
    for worker in workers:
        worker.start()
    spans = [results.get(timeout=1800) for _ in workers]
    for worker in workers:
        worker.join()
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    return processes * steps / wall


def stacked(
    k: int, dataset: str, batch_size: int, device, warmup: int, steps: int, bf16: bool, compiled
) -> float:
    """Trial-steps/s of K Adam trials stacked in one `StackedTrials` (steps/s × K)."""
    from tuner.execution.stacked import StackedTrials
    from tuner.search.vectorized_optimizers import vectorized_settings

    spec = bench_spec(dataset)
    rates = torch.logspace(-4, -2, k).tolist()
    stack = StackedTrials(spec, vectorized_settings(adam(rates[0], batch_size)), batch_size, device)
    for index, rate in enumerate(rates):
        config = adam(rate, batch_size)
        stack.add(index, config, index, vectorized_settings(config))
    if compiled:
        stack._step_grads = torch.compile(stack._step_grads)

    def step() -> None:
        with autocast(device, bf16):
            for key in stack.step():
                stack.end_epoch(key)

    return k * steps / timed_steps(step, device, warmup, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--ks", default="8,32,64,128", help="stack sizes, comma-separated")
    parser.add_argument("--processes", default="4,16", help="packed process counts")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--bf16", action="store_true", help="also time stacks under bf16")
    parser.add_argument("--compile", action="store_true", help="also time a compiled stack")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (no GPU)"
    console = Console()
    console.print(f"device: {name}; dataset {args.dataset}, batch {args.batch_size}")
    common = (args.dataset, args.batch_size, device, args.warmup, args.steps)

    baseline, per_epoch = one_trial(*common)
    rows = [("one trial per worker", baseline)]
    for processes in (int(p) for p in args.processes.split(",") if p):
        rows.append((f"{processes} processes sharing the device", packed(processes, *common)))
    packing = max((value for label, value in rows[1:]), default=None)
    for k in (int(k) for k in args.ks.split(",") if k):
        rows.append((f"batched K={k}, float32", stacked(k, *common, False, False)))
        if args.bf16:
            rows.append((f"batched K={k}, bf16 autocast", stacked(k, *common, True, False)))
        if args.compile:
            try:
                rows.append((f"batched K={k}, compiled", stacked(k, *common, args.bf16, True)))
            except Exception as error:  # report, don't hide, a compiler that cannot do it
                console.print(f"K={k} compiled: failed ({type(error).__name__}: {error})")

    table = Table(title=f"trial-epochs per second ({per_epoch} steps per epoch)")
    for column in ("how trials run", "trial-epochs/s", "× one trial", "× best packing"):
        table.add_column(column, justify="right" if column != "how trials run" else "left")
    for label, trial_steps in rows:
        versus_packing = (
            f"{trial_steps / packing:.2f}" if packing and label.startswith("batched") else ""
        )
        table.add_row(
            label, f"{trial_steps / per_epoch:.3f}", f"{trial_steps / baseline:.2f}", versus_packing
        )
    console.print(table)


if __name__ == "__main__":
    main()
