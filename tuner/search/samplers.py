"""The samplers a study file may name: each entry builds its Optuna sampler and says what it is.

Adding a sampler is one entry in `SAMPLERS`: ``[sampler] name`` is checked against its keys, and
the study note renders the entry's description.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna

from tuner.search.pruners import PRUNERS

# A diverged trial is recorded with the worst value and the constraint `diverged = 1`
# (tuner.execution.train): CMA-ES learns from the value and says it ignores the constraint; GP clips
# the infinite value to the worst finite one and says so. Both are the behaviour chosen, so
# neither is worth a line on every diverged trial of a `tuner worker`.
warnings.filterwarnings("ignore", message="Constraints have been set, but CmaEsSampler")
warnings.filterwarnings("ignore", message="Clip non-finite values to the min/max finite")

if TYPE_CHECKING:
    from tuner.spec import StudySpec


@dataclass(frozen=True)
class Sampler:
    """One registry entry.

    Attributes:
        description: one line, for the study note.
        build: the Optuna sampler for a study, given the seed to use.
        startup: how many trials it samples at random first unless ``[sampler]
            n_startup_trials`` says otherwise; None: it has no start-up phase.
    """

    description: str
    build: Callable[[StudySpec, int], optuna.samplers.BaseSampler]
    startup: int | None = None


def startup_trials(spec: StudySpec) -> int:
    """The study's random start-up trials: the study file's, or its sampler's default."""
    chosen = spec.sampler.n_startup_trials
    return chosen if chosen is not None else SAMPLERS[spec.sampler.name].startup or 0


def _tpe(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    # group=True: multivariate TPE over a conditional space models each optimizer's
    # parameters together instead of falling back to independent sampling.
    return optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=startup_trials(spec),
        multivariate=True,
        group=True,
        constant_liar=True,
    )


def _random(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


# CMA-ES, QMC and GP model the parameters every trial shares with one distribution
# (tuner.search.space samples a knob whose range differs per optimizer as its position in range
# so that the learning rate is always one of them) and sample the knobs only some
# optimizers have, and CMA-ES the optimizer itself, independently, by design (docs/reference.md:
# how samplers see the space). They would warn about that for every such knob of every
# trial, so they are told not to.
def _cmaes(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    # Under successive halving or Hyperband most trials end PRUNED; CMA-ES reading COMPLETE
    # ones only stayed at its random start-up for a whole 40-trial study (it proposed exactly
    # what random search did: docs/benchmarks.md). Optuna advises counting pruned trials
    # (by their last value) with multi-fidelity pruners, and not with the median rule.
    return optuna.samplers.CmaEsSampler(
        seed=seed,
        n_startup_trials=startup_trials(spec),
        consider_pruned_trials=PRUNERS[spec.pruner.name].multi_fidelity,
        warn_independent_sampling=False,
    )


def _qmc(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    # Scrambled, or every study would draw the same Sobol points whatever its seed (Optuna's
    # default): on the digits CNN ten seeds then searched one set of configurations. The
    # scramble is the study's seed, not the worker's, so that all workers draw from one
    # sequence (its index is shared in storage); `seed` drives the independent sampling.
    return optuna.samplers.QMCSampler(
        scramble=True,
        seed=spec.seed,
        independent_sampler=optuna.samplers.RandomSampler(seed=seed),
        warn_independent_sampling=False,
    )


def _gp(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(
        seed=seed, n_startup_trials=startup_trials(spec), warn_independent_sampling=False
    )


#: The samplers, by the name study files use; ``tpe`` is the default.
SAMPLERS: dict[str, Sampler] = {
    # 20 start-up trials, hyperopt's default for TPE, not Optuna's 10: on the digits CNN
    # (bench/search_efficiency.py, seeds 0-9) 5, 10, 15 and 20 were tried and 20 reached the
    # target soonest, and on ten fresh seeds (10-19) it got 355 of 359 right where 10 missed in
    # half of them (docs/benchmarks.md). Fewer random trials let TPE fit a noisy metric to
    # two or three lucky ones.
    "tpe": Sampler(
        "multivariate TPE, grouped over the conditional space, with constant liar for "
        "parallel workers",
        _tpe,
        startup=20,
    ),
    "random": Sampler("random sampling", _random),
    "cmaes": Sampler("CMA-ES", _cmaes, startup=10),
    "qmc": Sampler("quasi-Monte Carlo (Sobol)", _qmc),
    "gp": Sampler(
        "Gaussian-process Bayesian optimisation (it learns from completed trials only: under "
        "a pruner that stops most trials it samples at random for longer)",
        _gp,
        startup=10,
    ),
    # The optimizer of trial i is fixed when the trial is claimed
    # (tuner.study.lifecycle.claim_trial).
    "grid": Sampler(
        "grid over optimizers: trial i trains optimizer i mod n, the other parameters "
        "sampled at random",
        _random,
    ),
}


def make_sampler(spec: StudySpec, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded with the spec's seed unless another is given."""
    return SAMPLERS[spec.sampler.name].build(spec, spec.seed if seed is None else seed)
