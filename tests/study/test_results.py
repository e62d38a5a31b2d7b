"""Reading results back: which configuration is best (confirmed means first, unconfirmed
values, failed confirmations last), per optimizer, the trial-count sentence, opening studies.

Studies are real SQLite files holding trials added as Optuna records them
(``optuna.trial.create_trial``), so every rule is checked on the trials it will really read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from tuner.config import TrainingConfig
from tuner.errors import StudyNotFoundError
from tuner.study.results import (
    CONFIRMS,
    COPIED_FROM,
    WARM_START,
    best_by_optimizer,
    best_trained_value,
    count_sentence,
    is_confirmation_run,
    open_study,
    rank_configurations,
    ranked_by_optimizer,
    states_by_optimizer,
    trial_config,
    trial_optimizer,
)

OPTIMIZERS = ["sgd", "adam", "lion"]


def trial(
    optimizer: str, value: float | None, state: TrialState = TrialState.COMPLETE, **user_attrs: Any
) -> FrozenTrial:
    """A finished trial of `optimizer` as a worker records it (its config as a user attr)."""
    config = TrainingConfig(optimizer=optimizer, target="torch.optim:SGD", learning_rate=0.1)
    system_attrs = user_attrs.pop("system_attrs", {})
    return optuna.trial.create_trial(
        state=state,
        value=value if state is TrialState.COMPLETE else None,
        params={"optimizer": optimizer},
        distributions={"optimizer": CategoricalDistribution(OPTIMIZERS)},
        user_attrs={"config": config.to_dict(), **user_attrs},
        system_attrs=system_attrs,
    )


def study_with(
    url: str, trials: list[FrozenTrial], direction: str = "minimize", name: str = "results"
) -> optuna.Study:
    """A study in the SQLite file at `url` holding `trials`, numbered in order."""
    study = optuna.create_study(study_name=name, storage=url, direction=direction)
    study.set_user_attr("metric", "loss")
    study.add_trials(trials)
    return study


def numbers(ranked) -> list[int]:
    return [config.trial.number for config in ranked]


def test_confirmed_means_rank_first_then_single_values_then_failed_confirmations(
    sqlite_url: str,
) -> None:
    study = study_with(
        sqlite_url,
        [
            trial("sgd", 0.10),  # 0: best single value, never confirmed
            trial("adam", 0.50),  # 1: confirmed at a mean of 0.3
            trial("lion", 0.05),  # 2: the luckiest run, but one fresh seed diverged
            trial("adam", 0.20, **{CONFIRMS: 1}),
            trial("adam", 0.40, **{CONFIRMS: 1}),
            trial("lion", 0.06, **{CONFIRMS: 2}),
            trial("lion", None, TrialState.FAIL, **{CONFIRMS: 2}),
        ],
    )
    ranked = rank_configurations(study.trials, study.direction)
    assert numbers(ranked) == [1, 0, 2]
    adam, sgd, lion = ranked
    # The search's own 0.5 is left out of the mean: the winner's curse.
    assert adam.seed_values == (0.20, 0.40) and adam.mean == pytest.approx(0.30)
    assert adam.spread == pytest.approx(0.1414213562, rel=1e-9) and adam.seeds == 2
    assert not sgd.confirmed and sgd.mean == 0.10 and sgd.spread is None
    assert lion.confirmed and lion.failed_seeds == 1 and lion.seeds == 2


def test_maximising_ranks_the_largest_first(sqlite_url: str) -> None:
    study = study_with(
        sqlite_url, [trial("sgd", 0.7), trial("adam", 0.9), trial("lion", 0.8)], "maximize"
    )
    assert numbers(rank_configurations(study.trials, study.direction)) == [1, 2, 0]
    assert best_trained_value(study.trials, study.direction) == 0.9


def test_only_the_searchs_complete_trials_are_configurations(sqlite_url: str) -> None:
    study = study_with(
        sqlite_url,
        [
            trial("sgd", 0.01, **{COPIED_FROM: {"study": "earlier", "trial": 4}}),
            trial("adam", None, TrialState.PRUNED),
            trial("lion", None, TrialState.FAIL),
            trial("sgd", 0.30),
            trial("sgd", 0.02, **{CONFIRMS: 3}),
        ],
    )
    assert numbers(rank_configurations(study.trials, study.direction)) == [3]
    # Optuna's best_value would be the copied 0.01; this study never trained it.
    assert best_trained_value(study.trials, study.direction) == pytest.approx(0.02)
    assert best_trained_value(study.trials[:3], study.direction) is None


def test_a_confirmation_run_that_was_cut_short_is_no_seed(sqlite_url: str) -> None:
    study = study_with(
        sqlite_url,
        [
            trial("sgd", 0.30),
            # 1: its worker died (trial 3 retries it); 2: stopped by Ctrl-C.
            trial("sgd", None, TrialState.FAIL, **{CONFIRMS: 0}),
            trial(
                "sgd", None, TrialState.FAIL, fail_reason="interrupted by Ctrl-C", **{CONFIRMS: 0}
            ),
            trial("sgd", 0.25, **{CONFIRMS: 0}, system_attrs={"failed_trial": 1}),
        ],
    )
    (ranked,) = rank_configurations(study.trials, study.direction)
    assert ranked.seed_values == (0.25,) and ranked.failed_seeds == 0


def test_best_per_optimizer_in_rank_order(sqlite_url: str) -> None:
    study = study_with(
        sqlite_url,
        [
            trial("sgd", 0.4),
            trial("adam", 0.2),
            trial("sgd", 0.3),
            trial("lion", None, TrialState.FAIL),
            trial("adam", 0.25),
        ],
    )
    best = best_by_optimizer(ranked_by_optimizer(study.trials, study.direction))
    assert {name: t.number for name, t in best.items()} == {"adam": 1, "sgd": 2}
    assert list(best) == ["adam", "sgd"]
    assert list(ranked_by_optimizer(study.trials, study.direction)) == ["adam", "sgd"]
    states = states_by_optimizer(study.trials, best)
    assert list(states) == ["adam", "sgd", "lion"]  # best first, then those never complete
    assert states["lion"]["failed"] == 1 and states["sgd"]["complete"] == 2


def test_the_trial_count_sentence() -> None:
    finished = [
        trial("sgd", 1.0),
        trial("sgd", None, TrialState.PRUNED),
        trial("sgd", None, TrialState.FAIL),
    ]
    assert count_sentence(finished) == "3 trials: 1 complete, 1 pruned, 1 failed"
    assert count_sentence(finished[:1]) == "1 trial: 1 complete, 0 pruned, 0 failed"
    assert count_sentence([]) == "0 trials: 0 complete, 0 pruned, 0 failed"
    running = optuna.trial.create_trial(state=TrialState.RUNNING)
    assert count_sentence([*finished, running]) == (
        "4 trials: 1 running, 1 complete, 1 pruned, 1 failed"
    )


def test_a_trials_config_and_optimizer_are_read_back() -> None:
    recorded = trial("adam", 0.5)
    assert trial_config(recorded) == TrainingConfig.from_dict(recorded.user_attrs["config"])
    assert trial_optimizer(recorded) == "adam"
    copied = optuna.trial.create_trial(value=1.0, user_attrs={"config": {"optimizer": "lion"}})
    assert trial_optimizer(copied) == "lion"  # no params, as a copy without its space
    assert trial_config(optuna.trial.create_trial(value=1.0)) is None


def test_only_confirmation_runs_are_kept_from_the_pruner() -> None:
    assert is_confirmation_run({CONFIRMS: 2})
    # A warm start's queued best is a search trial: the pruner screens it like any other.
    assert not is_confirmation_run({WARM_START: {"study": "earlier", "trial": 1}})
    assert not is_confirmation_run({COPIED_FROM: {"study": "earlier", "trial": 1}})


def test_opening_a_study_that_is_not_there_names_those_that_are(sqlite_url: str) -> None:
    study_with(sqlite_url, [trial("sgd", 1.0)], name="present")
    study, url = open_study("present", sqlite_url)
    assert study.study_name == "present" and url == sqlite_url
    with pytest.raises(StudyNotFoundError, match=r"no study named 'absent' in .*: present$"):
        open_study("absent", sqlite_url)


def test_opening_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "studies.db"
    with pytest.raises(StudyNotFoundError, match=r"does not exist .*give the right --storage"):
        open_study("any", f"sqlite:///{path}")
    assert not path.parent.exists()
