"""User workloads named by import path in tests (``tests.workloads.factories:...``)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

from tuner.workloads.base import TrialContext


def broken(options: dict[str, Any], context: TrialContext) -> Any:
    """A factory that fails, as a user's buggy workload would."""
    raise RuntimeError("broken on purpose")


class _ProcessProbe:
    """One parameter descending x²; its metrics say how the worker process runs: torch's CPU
    threads and the process's niceness (what Ray's worker settings decide), whether it leads
    its own process group, sees no GPU, has the `tuner run` driver's modules loaded, and the
    value of $TUNER_PROBE (0 if unset); and with
    ``[workload.options] kill_once = FILE`` its first trial SIGKILLs its own worker (once:
    the file says it has)."""

    def __init__(self, kill_once: str | None = None) -> None:
        self.model = torch.nn.Linear(1, 1, bias=False)
        self.kill_once = kill_once

    def steps_per_epoch(self) -> int:
        return 1

    def epoch(self, generator: torch.Generator) -> Iterator[Callable[[], torch.Tensor]]:
        if self.kill_once is not None and not os.path.exists(self.kill_once):
            open(self.kill_once, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        yield lambda: self.model.weight.pow(2).sum()

    def evaluate(self) -> dict[str, float]:
        return {
            "loss": float(self.model.weight.pow(2).sum()),
            "torch_threads": float(torch.get_num_threads()),
            "niceness": float(os.getpriority(os.PRIO_PROCESS, 0)),
            "own_process_group": float(os.getpgrp() == os.getpid()),
            "no_gpu_visible": float(os.environ.get("CUDA_VISIBLE_DEVICES") == ""),
            "probe_variable": float(os.environ.get("TUNER_PROBE", "0")),
            # Imported by `tuner run`'s driver, never by a worker: present if forked from it.
            "has_drivers_modules": float("tuner.views.display" in sys.modules),
        }


def process_probe(options: dict[str, Any], context: TrialContext) -> Any:
    """A workload whose metrics say how its worker runs (see _ProcessProbe)."""
    return _ProcessProbe(options.get("kill_once"))


def self_killing(options: dict[str, Any], context: TrialContext) -> Any:
    """A workload whose every trial SIGKILLs its worker, as the out-of-memory killer would."""
    os.kill(os.getpid(), signal.SIGKILL)


def checkpointed_train(trial: Any) -> None:
    """A training function that checkpoints after every epoch and continues from
    ``trial.restore()``: a linear fit whose batches are drawn from torch's global random state
    (so a resume is exact only if that state comes back too), slowed by
    ``[workload.options] sleep`` seconds an epoch so that a test can kill it part-way."""
    import time

    data = torch.Generator().manual_seed(0)
    inputs = torch.randn(256, 4, generator=data)
    targets = inputs @ torch.arange(1.0, 5.0) + 0.1 * torch.randn(256, generator=data)
    model = torch.nn.Linear(4, 1)
    stepper = trial.config.build_stepper(model.parameters(), 8, trial.epochs)
    start = 1
    restored = trial.restore()
    if restored is not None:
        state, epoch = restored
        model.load_state_dict(state["model"])
        stepper.load_state_dict(state["stepper"])
        start = epoch + 1
    for epoch in range(start, trial.epochs + 1):
        stepper.train()
        for batch in torch.randperm(256).split(32):
            stepper.zero_grad()
            loss = torch.nn.functional.mse_loss(model(inputs[batch]).squeeze(1), targets[batch])
            loss.backward()
            stepper.step()
        stepper.eval()
        with torch.no_grad():
            val_loss = float(torch.nn.functional.mse_loss(model(inputs).squeeze(1), targets))
        stepper.end_epoch(val_loss)
        time.sleep(float(trial.options.get("sleep", 0)))
        trial.report({"val_loss": val_loss, "train_loss": float(loss.detach())}, epoch)
        trial.checkpoint({"model": model.state_dict(), "stepper": stepper.state_dict()}, epoch)
