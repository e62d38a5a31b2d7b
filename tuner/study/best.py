"""`best_config()`: the winning configuration of a study, for use from any other project.

cfg = tuner.best_config("mnist-cnn")
optimizer = cfg.build_optimizer(model.parameters())
scheduler = cfg.build_scheduler(optimizer, steps_per_epoch=len(loader), epochs=5)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from tuner.config import TrainingConfig
from tuner.errors import EmptyStudyError
from tuner.storage.checkpoints import kept_checkpoint
from tuner.study.results import describe_seeds, format_param, open_study, ranked_by_optimizer

if TYPE_CHECKING:
    import torch

    from tuner.search.schedules import Scheduler


@dataclass(frozen=True, kw_only=True)
class BestConfig(TrainingConfig):
    """A `TrainingConfig` with where it came from and the value it reached.

    Its ``params`` (the user's own parameters, ``[params]`` and ``trial.suggest_*``) is a
    read-only mapping in natural units: ``cfg.params["dropout"]``; empty for a study without
    any.

    Attributes:
        study: the study's name.
        trial_number: the search trial that found the winning configuration.
        value: that trial's final validation metric (one run, one seed).
        metric: the metric's name (``val_accuracy``, ``loss``, ...).
        direction: ``minimize`` or ``maximize``.
        confirmed: whether the configuration was re-trained on fresh seeds
            (``[budget] confirm``); when False, `value` is all there is to go on.
        seeds: how many fresh seeds it was re-trained on (0 if never).
        mean: the mean of the metric over the fresh seeds that completed, or None.
        spread: the standard deviation over those seeds, or None below two.
        failed_seeds: fresh seeds on which it failed (diverged).
        checkpoint: the winning trial's last checkpoint, kept when the study asked for it
            (``[execution] keep_best_checkpoint``), else None: ``torch.load(path,
            weights_only=False)["state"]`` holds its model's ``state_dict()`` under
            ``"model"`` (built-in workloads) or what its ``trial.checkpoint`` saved under
            ``"user"`` (training functions and scripts).
    """

    study: str
    trial_number: int
    value: float
    metric: str
    direction: str
    confirmed: bool = False
    seeds: int = 0
    mean: float | None = None
    spread: float | None = None
    failed_seeds: int = 0
    checkpoint: Path | None = None

    def rows(self) -> list[tuple[str, str]]:
        """What it is, in (name, value) rows of plain text: the value it reached, then every
        setting (`tuner best` draws them as a table, ``str()`` as aligned lines)."""
        lookahead = self.lookahead
        return [
            (self.metric, f"{self.value:.6g} ({self.direction}), on the search's seed"),
            (
                "fresh seeds",
                describe_seeds(self.mean, self.spread, self.seeds, self.failed_seeds),
            ),
            ("optimizer", f"{self.optimizer}  [{self.target}]"),
            ("learning_rate", f"{self.learning_rate:.6g}"),
            ("momentum", "—" if self.momentum is None else f"{self.momentum:.6g}"),
            ("weight_decay", f"{self.weight_decay:.6g}"),
            *[
                (key, f"{value:.6g}" if isinstance(value, float) else str(value))
                for key, value in self.hyperparameters.items()
            ],
            (
                "schedule",
                self.schedule
                + (f" (warmup {self.warmup_fraction:.1%})" if self.warmup_fraction else ""),
            ),
            ("max_grad_norm", "off" if self.max_grad_norm is None else f"{self.max_grad_norm:.4g}"),
            ("batch_size", "—" if self.batch_size is None else str(self.batch_size)),
            (
                "lookahead",
                "off" if lookahead is None else f"k={lookahead[0]}, alpha={lookahead[1]:.3g}",
            ),
            *[(name, format_param(value)) for name, value in self.params.items()],
        ]

    def __str__(self) -> str:
        """A few readable lines (``print(cfg)``); ``repr()`` keeps every field."""
        rows = self.rows()
        width = max(len(name) for name, _ in rows)
        lines = [f"Best of study {self.study} (trial {self.trial_number}):"]
        lines += [f"  {name:<{width}}  {value}" for name, value in rows]
        return "\n".join(lines)

    def build_scheduler(
        self,
        optimizer: torch.optim.Optimizer,
        steps_per_epoch: int,
        epochs: int,
        direction: Literal["minimize", "maximize"] | None = None,
    ) -> Scheduler:
        """As `TrainingConfig.build_scheduler`, in the study's direction unless told otherwise:
        ``plateau`` (ReduceLROnPlateau) must know whether the metric it is given should fall
        or rise."""
        return super().build_scheduler(
            optimizer,
            steps_per_epoch,
            epochs,
            direction or self.direction,  # type: ignore[arg-type]
        )


def best_config(
    study: str, *, optimizer: str | None = None, storage: str | None = None
) -> BestConfig:
    """The best configuration: the best completed trial, judged by the mean over fresh seeds
    where the study confirmed its winners (see tuner.study.results for the ranking).

    Args:
        study: the study's name (the ``name`` of its study file).
        optimizer: only consider trials of this optimizer type (``adamw``).
        storage: a storage URL; else ``TUNER_STORAGE``, else the default SQLite file.

    Raises:
        StudyNotFoundError: no such study; the message lists the studies there are.
        EmptyStudyError: no completed trial (of that optimizer type) yet.
    """
    loaded, url = open_study(study, storage)
    everything = ranked_by_optimizer(loaded.get_trials(deepcopy=False), loaded.direction)
    best = everything
    if optimizer is not None:
        best = {optimizer: best[optimizer]} if optimizer in best else {}
    if not best:
        which = ""
        if optimizer:
            others = ", ".join(everything) or "none"
            which = f" of optimizer {optimizer!r} (types that have one: {others})"
        raise EmptyStudyError(f"study {study!r} has no completed trial{which} yet")
    ranked = next(iter(best.values()))
    config = TrainingConfig.from_dict(ranked.trial.user_attrs["config"])
    fields = {name: getattr(config, name) for name in TrainingConfig.__dataclass_fields__}
    # Read-only: a caller's change would no longer be the study's winner.
    fields["params"] = MappingProxyType(dict(config.params))
    return BestConfig(
        **fields,
        study=study,
        trial_number=ranked.trial.number,
        value=float(ranked.trial.value),
        metric=loaded.user_attrs.get("metric", "value"),
        direction=loaded.direction.name.lower(),
        confirmed=ranked.confirmed,
        seeds=ranked.seeds,
        mean=ranked.mean if ranked.seed_values else None,
        spread=ranked.spread,
        failed_seeds=ranked.failed_seeds,
        checkpoint=kept_checkpoint(url, study, ranked.trial.number),
    )
