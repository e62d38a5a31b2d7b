"""The pruners a study file may name: each entry builds its Optuna pruner and says what it does.

Resources are epochs. Adding a pruner is one entry in `PRUNERS`: ``[pruner] name`` is checked
against its keys, and the study note renders the entry's description of the spec's settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna

if TYPE_CHECKING:
    from tuner.spec import StudySpec


@dataclass(frozen=True)
class Pruner:
    """One registry entry.

    Attributes:
        build: the Optuna pruner for a study.
        describe: the pruner with the study's settings, in words (the study note).
        prunes: whether it ever stops a trial early (``none`` does not).
    """

    build: Callable[[StudySpec], optuna.pruners.BasePruner]
    describe: Callable[[StudySpec], str]
    prunes: bool = True


#: The pruners, by the name study files use; ``hyperband`` is the default.
PRUNERS: dict[str, Pruner] = {
    "hyperband": Pruner(
        lambda spec: optuna.pruners.HyperbandPruner(
            min_resource=spec.pruner.min_resource,
            max_resource=spec.budget.epochs,
            reduction_factor=spec.pruner.reduction_factor,
        ),
        lambda spec: (
            f"Hyperband over epochs (min resource {spec.pruner.min_resource}, max "
            f"{spec.budget.epochs}, reduction factor {spec.pruner.reduction_factor})"
        ),
    ),
    "median": Pruner(
        lambda spec: optuna.pruners.MedianPruner(
            n_startup_trials=spec.pruner.n_startup_trials,
            n_warmup_steps=spec.pruner.n_warmup_steps,
        ),
        lambda spec: (
            f"median rule (after {spec.pruner.n_startup_trials} startup trials and "
            f"{spec.pruner.n_warmup_steps} warm-up epochs)"
        ),
    ),
    "successive_halving": Pruner(
        lambda spec: optuna.pruners.SuccessiveHalvingPruner(
            min_resource=spec.pruner.min_resource,
            reduction_factor=spec.pruner.reduction_factor,
        ),
        lambda spec: (
            f"successive halving over epochs (min resource {spec.pruner.min_resource}, "
            f"reduction factor {spec.pruner.reduction_factor})"
        ),
    ),
    "wilcoxon": Pruner(
        lambda spec: optuna.pruners.WilcoxonPruner(n_startup_steps=spec.pruner.n_warmup_steps),
        lambda spec: (
            f"Wilcoxon signed-rank test (after {spec.pruner.n_warmup_steps} startup epochs)"
        ),
    ),
    "none": Pruner(
        lambda spec: optuna.pruners.NopPruner(),
        lambda spec: "none; every trial trains all its epochs",
        prunes=False,
    ),
}


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The spec's pruner."""
    return PRUNERS[spec.pruner.name].build(spec)
