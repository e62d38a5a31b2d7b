"""One read of a study for `tuner report`: every figure and the page read this, not storage."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from tuner.study.importance import finished
from tuner.study.results import (
    RankedConfig,
    best_by_optimizer,
    direction_sign,
    is_search_trial,
    ranked_by_optimizer,
    trial_optimizer,
)


@dataclass(frozen=True)
class StudySnapshot:
    """A study as it stood when the report read it (its trials read once).

    Attributes:
        name: the study's name.
        direction: minimize or maximize.
        metric: the metric the study optimizes (its ``metric`` user attribute).
        spec: the study file as `tuner run` recorded it (empty for a foreign study).
        trials: every trial, by number.
        storage_url: where the study lives.
    """

    name: str
    direction: StudyDirection
    metric: str
    spec: dict[str, Any]
    trials: tuple[FrozenTrial, ...]
    storage_url: str

    @classmethod
    def read(cls, study: optuna.Study, storage_url: str) -> StudySnapshot:
        """Read a study's attributes and trials, once."""
        return cls(
            name=study.study_name,
            direction=study.direction,
            metric=study.user_attrs.get("metric", "value"),
            spec=study.user_attrs.get("spec") or {},
            trials=tuple(study.get_trials(deepcopy=False)),
            storage_url=storage_url,
        )

    @property
    def sign(self) -> float:
        """1 when the study minimises, −1 when it maximises: ``sign * value`` orders best first."""
        return direction_sign(self.direction)

    @property
    def direction_name(self) -> str:
        return self.direction.name.lower()

    @property
    def workload(self) -> dict[str, Any]:
        """The recorded ``[workload]`` section (name and options)."""
        return self.spec.get("workload") or {}

    @cached_property
    def complete(self) -> list[FrozenTrial]:
        """The COMPLETE trials with a finite value, by number."""
        return finished(self.trials)

    @cached_property
    def ranked(self) -> list[FrozenTrial]:
        """The complete trials of the search, best first (confirmation runs and warm-start
        copies are shown with the configuration they belong to: `ranked_by_optimizer`)."""
        search = [trial for trial in self.complete if is_search_trial(trial)]
        return sorted(search, key=lambda trial: self.sign * trial.value)

    @cached_property
    def ranked_by_optimizer(self) -> dict[str, RankedConfig]:
        """The best configuration of each optimizer type, by the mean over fresh seeds where
        it was confirmed (tuner.study.results), best first."""
        return ranked_by_optimizer(self.trials, self.direction)

    @cached_property
    def best_by_optimizer(self) -> dict[str, FrozenTrial]:
        """The search trial of each optimizer type's best configuration, best first."""
        return best_by_optimizer(self.ranked_by_optimizer)

    @cached_property
    def optimizers(self) -> list[str]:
        """The optimizer types: the study file's order, then any others the trials used."""
        order = list(self.spec.get("search", {}).get("optimizers", []))
        used = {trial_optimizer(t) for t in self.trials} - {None} - set(order)
        return order + sorted(used)
