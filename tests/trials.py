"""Trials as tuner records them, built for tests that need a study to hold some."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

from tuner.study.results import CONFIRMS


def confirmation_runs(trial: FrozenTrial, seeds: int = 3) -> list[FrozenTrial]:
    """`seeds` re-runs of a finished trial on other seeds, as confirmation records them: its
    parameters, a value 1 % apart per seed, and the user attribute ``confirms``."""
    assert trial.value is not None
    return [
        optuna.trial.create_trial(
            params=trial.params,
            distributions=trial.distributions,
            value=trial.value * (1 + 0.01 * seed),
            user_attrs={**trial.user_attrs, CONFIRMS: trial.number},
        )
        for seed in range(seeds)
    ]
