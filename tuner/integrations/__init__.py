"""Adapters that let a training framework's own loop report to a tuner trial.

`tuner.integrations.lightning` (PyTorch Lightning) and `tuner.integrations.transformers`
(Hugging Face Trainer), installed with the extras ``tuner[lightning]`` and
``tuner[transformers]``. Both report through `tuner.execution.trial.Trial.report` and stop the same
way, through `Reporter`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from tuner.execution.train import TrialDiverged
from tuner.execution.trial import Trial


class Reporter:
    """Reports a framework's metrics to a trial. When the pruner stops the trial (or it
    diverges) the stop is kept: the framework is asked to end training cleanly (its own
    end-of-training hooks run), and `raise_stop` raises it once the framework has stopped,
    so that the trial ends PRUNED (or diverged) rather than COMPLETE."""

    def __init__(self, trial: Trial):
        self.trial = trial
        self.stop: BaseException | None = None

    def report(self, metrics: Mapping[str, Any], epoch: int) -> bool:
        """Report the numeric scalars of `metrics` after `epoch`; True when training must stop."""
        scalars = {name: float(value) for name, value in metrics.items() if _scalar(value)}
        try:
            self.trial.report(scalars, epoch)
        except (optuna.TrialPruned, TrialDiverged) as stop:
            self.stop = stop
            return True
        return False

    def raise_stop(self) -> None:
        """Raise the kept stop, if the trial was stopped."""
        if self.stop is not None:
            raise self.stop


def _scalar(value: Any) -> bool:
    """A number, or a tensor holding one number (Lightning logs tensors)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    numel = getattr(value, "numel", None)
    return numel is not None and numel() == 1
