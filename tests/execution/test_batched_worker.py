"""A worker training several trials at once, against a real SQLite study: the same results
as one trial per worker, places refilled as trials end, pruning and failure per trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tests.specs import build_spec
from tuner.cli import main
from tuner.execution.worker import run_worker, trials_per_worker
from tuner.search.space import params_for
from tuner.spec import StudySpec
from tuner.storage.rdb import open_storage
from tuner.study import lifecycle as studies

QUICKSTART = Path(__file__).parents[2] / "studies" / "quickstart.toml"


REGRESSION = {
    "workload": {"name": "mlp_regression", "options": {"samples": 250}},
    "search": {
        "optimizers": ["adam", "momentum", "lion", "radam"],
        "weight_decay": "off",
        "batch_sizes": [32],
    },
    "optimizers": {},
    # grid: each optimizer in turn, so every run has stacks and a fallback (radam).
    "sampler": {"name": "grid"},
    "pruner": {"name": "none"},
    "budget": {"trials": 8, "epochs": 3},
}


def regression_spec(name: str, batch: int, **sections: Any) -> StudySpec:
    return build_spec(
        REGRESSION, {"execution": {"trials_per_worker": batch}}, name=name, **sections
    )


def run_study(spec: StudySpec, url: str, enqueued: list[dict[str, Any]] = ()) -> optuna.Study:
    study = studies.create_or_resume(spec, open_storage(url))
    for values in enqueued:
        study.enqueue_trial(params_for(spec, values))
    run_worker(spec, url, worker="w")
    return optuna.load_study(study_name=spec.name, storage=open_storage(url))


def test_batched_trials_match_one_trial_per_worker(sqlite_url: str) -> None:
    alone = run_study(regression_spec("alone", 1), sqlite_url).trials
    stacked = run_study(regression_spec("stacked", 4), sqlite_url).trials

    assert len(stacked) == len(alone) == 8
    optimizers = sorted(trial.params["optimizer"] for trial in stacked)
    assert optimizers == sorted(["adam", "momentum", "lion", "radam"] * 2)
    assert sum(trial.state == TrialState.COMPLETE for trial in stacked) >= 6
    for one, other in zip(alone, stacked, strict=True):
        assert other.params == one.params  # the same trial, sampled the same way
        assert other.state == one.state
        assert other.user_attrs.get("fail_reason") == one.user_attrs.get("fail_reason")
        if one.state == TrialState.COMPLETE:
            assert other.value == pytest.approx(one.value, rel=1e-3)
        assert other.intermediate_values.keys() == one.intermediate_values.keys()
        # What the dashboard shows is recorded the same way, whichever way a trial ran.
        assert other.user_attrs.keys() == one.user_attrs.keys()
        assert other.user_attrs["epochs_run"] == one.user_attrs["epochs_run"]


def test_places_are_refilled_as_trials_end_and_a_diverging_trial_stops_alone(
    sqlite_url: str,
) -> None:
    good = {"optimizer": "adam", "learning_rate": 3e-3}
    wild = {"optimizer": "momentum", "learning_rate": 1e6}
    spec = regression_spec(
        "refill",
        2,
        budget={"trials": 4},
        optimizers={"momentum": {"learning_rate": [1e-3, 1e7]}},
    )
    trials = run_study(spec, sqlite_url, [good, wild, good, good]).trials

    states = [trial.state for trial in trials]
    assert states == [TrialState.COMPLETE] * 4
    assert "diverged in epoch 1" in trials[1].user_attrs["diverged"]
    # Trial 2 took the failed trial's place at once, while trial 0 was still training.
    assert trials[2].datetime_start < trials[0].datetime_complete
    # Never more than two at once.
    for trial in trials:
        overlapping = [
            other
            for other in trials
            if other.datetime_start <= trial.datetime_start < other.datetime_complete
        ]
        assert len(overlapping) <= 2


def test_a_stacked_trial_is_pruned_on_its_own(sqlite_url: str) -> None:
    good = {"optimizer": "adam", "learning_rate": 3e-3}
    stalled = {"optimizer": "adam", "learning_rate": 1e-8}
    spec = regression_spec(
        "prune",
        2,
        budget={"trials": 3},
        optimizers={"adam": {"learning_rate": [1e-8, 1e-2]}},
        pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    )
    trials = run_study(spec, sqlite_url, [good, good, stalled]).trials

    assert [trial.state for trial in trials] == [
        TrialState.COMPLETE,
        TrialState.COMPLETE,
        TrialState.PRUNED,
    ]
    assert list(trials[2].intermediate_values) == [1]
    assert trials[2].user_attrs["epochs_run"] == 1


def test_auto_stacks_on_a_gpu_only() -> None:
    import torch

    assert trials_per_worker("auto", torch.device("cpu")) == 1
    assert trials_per_worker("auto", torch.device("cuda")) > 1
    assert trials_per_worker(8, torch.device("cpu")) == 8


@pytest.mark.parametrize("value", ["0", "many"])
def test_a_bad_batch_option_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str], sqlite_url: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(QUICKSTART), "--storage", sqlite_url, "--batch", value])
    assert exit_info.value.code == 2
    assert "expected a positive number or 'auto'" in capsys.readouterr().err


def test_a_bad_trials_per_worker_is_a_spec_error(
    capsys: pytest.CaptureFixture[str], sqlite_url: str
) -> None:
    arguments = ["--storage", sqlite_url, "--set", "execution.trials_per_worker=0"]
    assert main(["run", str(QUICKSTART), *arguments]) == 2
    assert "trials_per_worker" in capsys.readouterr().err
    assert not optuna.get_all_study_summaries(open_storage(sqlite_url))
