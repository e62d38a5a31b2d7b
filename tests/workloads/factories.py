"""User workloads named by import path in tests (``tests.workloads.factories:...``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

from tuner.workloads.base import TrialContext


def broken(options: dict[str, Any], context: TrialContext) -> Any:
    """A factory that fails, as a user's buggy workload would."""
    raise RuntimeError("broken on purpose")


class _ProcessProbe:
    """One parameter descending x²; its metrics say how the worker process runs: torch's CPU
    threads and the process's niceness (what Ray's worker settings decide)."""

    def __init__(self) -> None:
        self.model = torch.nn.Linear(1, 1, bias=False)

    def steps_per_epoch(self) -> int:
        return 1

    def epoch(self, generator: torch.Generator) -> Iterator[Callable[[], torch.Tensor]]:
        yield lambda: self.model.weight.pow(2).sum()

    def evaluate(self) -> dict[str, float]:
        return {
            "loss": float(self.model.weight.pow(2).sum()),
            "torch_threads": float(torch.get_num_threads()),
            "niceness": float(os.getpriority(os.PRIO_PROCESS, 0)),
        }


def process_probe(options: dict[str, Any], context: TrialContext) -> Any:
    """A workload that reports its worker's torch threads and niceness as metrics."""
    return _ProcessProbe()
