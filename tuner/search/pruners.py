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
        reduction_factor: for a pruner that decides at rungs of epochs, its reduction factor
            when the study file sets none; None for the others.
    """

    build: Callable[[StudySpec], optuna.pruners.BasePruner]
    describe: Callable[[StudySpec], str]
    prunes: bool = True
    reduction_factor: int | None = None

    @property
    def multi_fidelity(self) -> bool:
        """Whether it stops trials at rungs of epochs (successive halving, Hyperband)."""
        return self.reduction_factor is not None


def reduction_factor(spec: StudySpec) -> int:
    """The study's reduction factor: the study file's, or its pruner's default."""
    default = PRUNERS[spec.pruner.name].reduction_factor
    assert default is not None, f"{spec.pruner.name} has no rungs"
    return spec.pruner.reduction_factor or default


#: The pruners, by the name study files use; ``successive_halving`` is the default.
PRUNERS: dict[str, Pruner] = {
    "hyperband": Pruner(
        lambda spec: optuna.pruners.HyperbandPruner(
            min_resource=spec.pruner.min_resource,
            max_resource=spec.budget.epochs,
            reduction_factor=reduction_factor(spec),
        ),
        lambda spec: (
            f"Hyperband over epochs (min resource {spec.pruner.min_resource}, max "
            f"{spec.budget.epochs}, reduction factor {reduction_factor(spec)})"
        ),
        reduction_factor=3,  # Optuna's
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
            reduction_factor=reduction_factor(spec),
        ),
        lambda spec: (
            f"asynchronous successive halving over epochs (min resource "
            f"{spec.pruner.min_resource}, reduction factor {reduction_factor(spec)}: at each rung "
            f"the best 1/{reduction_factor(spec)} of the trials so far train on)"
        ),
        # It keeps the better half at each rung (1, 2, 4, 8… epochs): on the digits CNN a
        # factor of 2 reached the target with less training than 3 or 4, whose rungs stop more
        # of the trials that would have got there (docs/benchmarks.md, compute to target).
        reduction_factor=2,
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
