"""The trial a user's training code receives: its configuration, and `report` to the study.

A training function ``train(trial)`` (``[workload] name = "train:train"``) gets one from its
worker; a script run per trial (``[workload] command``) gets one from `tuner.current_trial()`
(tuner.execution.script). Either way `report` goes through the same judgement as tuner's own loop
(tuner.execution.train.close_epoch): the learning curve is recorded, a non-finite value is a
divergence, and the pruner's decision, read from the shared storage, stops the trial.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
import torch

from tuner.config import TrainingConfig
from tuner.execution.checkpointing import TrialCheckpoints
from tuner.execution.output import captured, keep_captured
from tuner.execution.train import EpochResult, TrainingRecord, TrialDiverged, close_epoch
from tuner.spec import StudySpec
from tuner.storage import optuna_internals as internals


class MetricNotReported(Exception):
    """The user's code reported without the study's metric, or never reported at all."""


class Trial:
    """One trial as the user's training code sees it.

    Attributes:
        number: the trial's number in its study.
        config: the sampled `TrainingConfig`: ``config.build_optimizer(model.parameters())``
            and ``config.build_scheduler(optimizer, steps_per_epoch, epochs)``, as
            `tuner.best_config()` gives them later; ``config.batch_size`` the sampled batch.
        seed: the trial's seed (torch is seeded with it before the code runs).
        device: where to train (the worker's GPU, else the CPU).
        epochs: the study's ``[budget] epochs``: how many epochs to train and report.
        options: the study file's ``[workload.options]``.
        params: the user's own parameters (tuner.search.params) sampled so far, by name:
            the study file's ``[params]``, and those asked with ``suggest_*``.
        metric, direction: what the study optimises.
        optuna_trial: the Optuna trial underneath (its storage, its id).
        record: the learning curve so far, as the worker records it.

    `checkpoint` saves the training state between epochs and `restore` gives a re-run of the
    trial (its worker died, or it was interrupted) the last one back, so that it continues
    there instead of at epoch 1.
    """

    def __init__(
        self,
        trial: optuna.Trial,
        spec: StudySpec,
        config: TrainingConfig,
        seed: int,
        device: torch.device,
        record: TrainingRecord,
        on_report: Callable[[Trial, BaseException | None], None] | None = None,
        checkpoints: TrialCheckpoints | None = None,
    ):
        self.optuna_trial, self.record = trial, record
        self._spec, self._on_report = spec, on_report
        self._checkpoints = checkpoints or TrialCheckpoints(trial, spec)
        self._restored: tuple[Any, int] | None = None
        self.number = trial.number
        self.config, self.seed, self.device = config, seed, device
        self.epochs = spec.budget.epochs
        self.options: dict[str, Any] = dict(spec.workload.options)
        self.params: dict[str, Any] = dict(config.params)
        self.metric: str = spec.metric or ""
        self.direction = spec.direction
        #: The study's metric as last reported (NaN before the first report).
        self.value = math.nan
        #: Why the trial was stopped (pruned or diverged), once `report` has raised it.
        self.stopped: BaseException | None = None

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        """A float parameter of the user's, as Optuna's ``Trial.suggest_float`` (asked again,
        the same value); stored under `name` and shown with the trial's results."""
        return self._suggest(
            name, lambda: self.optuna_trial.suggest_float(name, low, high, step=step, log=log)
        )

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        """An integer parameter of the user's, as Optuna's ``Trial.suggest_int``."""
        return self._suggest(
            name, lambda: self.optuna_trial.suggest_int(name, low, high, step=step, log=log)
        )

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        """One of `choices`, as Optuna's ``Trial.suggest_categorical``."""
        return self._suggest(name, lambda: self.optuna_trial.suggest_categorical(name, choices))

    def _suggest(self, name: str, sample: Callable[[], Any]) -> Any:
        """Sample through Optuna (which checks the distribution and repeats a value already
        drawn), then record the parameter in the trial's configuration, so that results,
        `best_config()` and the report show it like a declared one."""
        if (why := self._spec.reserved(name)) is not None:
            raise ValueError(f"trial.suggest_*({name!r}): {why}")
        value = sample()
        if name not in self.params or self.params[name] != value:
            self.params[name] = value
            self.config = dataclasses.replace(self.config, params=dict(self.params))
            self.optuna_trial.storage.set_trial_user_attr(
                internals.trial_id(self.optuna_trial), "config", self.config.to_dict()
            )
        return value

    def checkpoint(self, state: Any, epoch: int) -> None:
        """Save `state` (anything ``torch.save`` takes: model, optimizer, scheduler state
        dicts...) as the trial's state after `epoch` epochs, with torch's random state; only
        the latest is kept. Nothing is saved with ``[execution] checkpoint_every = 0``; a
        failed write is one warning, and the trial trains on without checkpoints."""
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        saved = {"user": state, "torch_rng": torch.get_rng_state(), "cuda_rng": cuda}
        self._checkpoints.save(epoch, saved, self.record)

    def restore(self) -> tuple[Any, int] | None:
        """The last `checkpoint` of this trial's line and its epoch, for a re-run: continue
        at the next epoch (the epochs up to it are reported already, and torch's random state
        is restored); None for a fresh trial, or when the checkpoint is unusable (a warning
        names it): start at epoch 1."""
        if self._restored is None:
            checkpoint = self._checkpoints.load()
            if checkpoint is None or not isinstance(checkpoint.state, dict):
                return None
            self._checkpoints.resumed(checkpoint, self.record)
            if checkpoint.curve:
                self.value = checkpoint.curve[-1][self.metric]
            torch.set_rng_state(checkpoint.state["torch_rng"])
            if checkpoint.state["cuda_rng"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(checkpoint.state["cuda_rng"])
            self._restored = (checkpoint.state["user"], checkpoint.epoch)
        return self._restored

    def report(self, metrics: Mapping[str, float] | float, epoch: int) -> None:
        """Record one epoch's metrics (a number is the study's metric) after `epoch` epochs.

        A ``train_loss`` (or ``loss``) among them judges divergence as in tuner's own loop; a
        ``learning_rate`` joins the learning curve (else the configured one is drawn).

        Raises:
            optuna.TrialPruned: the pruner stopped the trial: return (or let it propagate).
            TrialDiverged: a reported value is NaN or infinite.
            MetricNotReported: `metrics` lacks the study's metric.
        """
        if not isinstance(metrics, Mapping):
            metrics = {self.metric: metrics}
        values = {name: float(value) for name, value in metrics.items()}
        if self.metric not in values:
            raise MetricNotReported(
                f"reported {', '.join(values) or 'nothing'} in epoch {epoch}, not the study's "
                f"metric {self.metric!r} (the top-level metric of the study file)"
            )
        others = {k: v for k, v in values.items() if k not in ("train_loss", "learning_rate")}
        result = EpochResult(
            train_loss=values.get("train_loss", values.get("loss", values[self.metric])),
            parameter_norm=0.0,  # the model is the user's: the reported values judge it
            metrics=others,
            learning_rate=values.get("learning_rate", self.config.learning_rate),
        )
        try:
            self.value = close_epoch(self.optuna_trial, self._spec, self.record, epoch, result)
        except (optuna.TrialPruned, TrialDiverged) as stop:
            self.stopped = stop
            raise
        finally:
            if self._on_report is not None:
                self._on_report(self, self.stopped)


def run_function(function: Callable[[Trial], Any], trial: Trial) -> float:
    """Call the user's ``train(trial)`` and return the trial's value: what it returns (a
    number, or a mapping holding the study's metric), else the last reported value. What it
    prints is kept (tuner.execution.output).

    Raises:
        optuna.TrialPruned: the pruner stopped it (even if the function caught the exception).
        TrialDiverged: it reported or returned a non-finite value.
        MetricNotReported: it returned nothing and never reported the study's metric.
        TypeError: it returned something that is not a number.
    """
    torch.manual_seed(trial.seed)
    with captured() as output:
        try:
            returned = function(trial)
        except Exception as error:
            # Its reason (tuner.execution.worker.settle) ends with the last lines it printed.
            lines = output.last_lines()
            if lines and not isinstance(error, optuna.TrialPruned | TrialDiverged):
                error.add_note(f"output ends:\n{lines}")
            raise
        finally:
            keep_captured(trial.optuna_trial, output)
    if trial.stopped is not None:  # the function swallowed the stop and returned
        raise trial.stopped
    return final_value(trial, returned, "train()")


def final_value(trial: Trial, returned: Any, what: str) -> float:
    """The trial's value from what the code returned (None: the last report)."""
    if isinstance(returned, Mapping):
        if trial.metric not in returned:
            raise MetricNotReported(
                f"{what} returned {', '.join(map(str, returned))}, not the study's metric "
                f"{trial.metric!r}"
            )
        returned = returned[trial.metric]
    if returned is None:
        if math.isnan(trial.value) and not trial.record.curve:
            raise MetricNotReported(
                f"{what} never reported the study's metric {trial.metric!r}: call "
                f"trial.report({{{trial.metric!r}: value}}, epoch) or return the value"
            )
        return trial.value
    try:
        if isinstance(returned, str | bytes):  # float("0.5") would read a string as a number
            raise TypeError
        value = float(returned)
    except (TypeError, ValueError):
        raise TypeError(f"{what} returned {returned!r}, not a number") from None
    if not math.isfinite(value):
        raise TrialDiverged(f"diverged: {what} returned {trial.metric} {value}")
    return value
