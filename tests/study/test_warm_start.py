"""Warm starts from the shared database: a new study seeded with an earlier study's best
configurations and agreeing trials, on real SQLite and PostgreSQL studies."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

import tuner
from tests.specs import build_spec
from tuner.cli import main
from tuner.errors import SpecError, StudyNotFoundError
from tuner.execution.worker import run_worker
from tuner.runner import create_study
from tuner.spec import StudySpec, parse_spec
from tuner.storage import optuna_internals as internals
from tuner.storage.rdb import open_storage
from tuner.study import lifecycle as studies
from tuner.study import warm_start
from tuner.study.results import COPIED_FROM, rank_configurations


def _spec(name: str, *, warm: list[str] | None = None, **changes: Any) -> StudySpec:
    earlier_study = {
        "workload": {"name": "rosenbrock", "options": {"steps_per_epoch": 20}},
        "search": {
            "optimizers": ["sgd", "momentum", "adam"],
            "weight_decay": "off",
            "warm_start": warm or [],
        },
        "optimizers": {"sgd": {"learning_rate": [1e-5, 1e-2]}},
        "budget": {"trials": 8, "epochs": 2},
        "pruner": {"name": "none"},
    }
    return build_spec(earlier_study, name=name, **changes)


@pytest.fixture
def earlier(storage_url: str, study_name: str) -> StudySpec:
    """A finished study to warm-start from; the grid sampler makes sure it trains each
    optimizer (trial i trains optimizers[i % 3])."""
    spec = _spec(study_name, sampler={"name": "grid"})
    studies.create_or_resume(spec, open_storage(storage_url))
    run_worker(spec, storage_url)
    return spec


@pytest.fixture
def later_name(storage_url: str) -> Iterator[str]:
    """The name of the warm-started study, deleted afterwards from shared databases."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    if name in optuna.get_all_study_names(storage_url):
        optuna.delete_study(study_name=name, storage=storage_url)


def test_the_best_configurations_run_first_and_agreeing_trials_are_copied(
    storage_url: str, earlier: StudySpec, later_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = optuna.load_study(study_name=earlier.name, storage=storage_url)
    # sgd's learning-rate range differs here: its trials cannot be read as draws from it, and
    # its learning rate, sampled as a position in that range (tuner.search.space), would train
    # another rate here: none of its configurations is queued either.
    spec = _spec(
        later_name, warm=[earlier.name], optimizers={"sgd": {"learning_rate": [1e-4, 1e-2]}}
    )
    study, [transfer] = create_study(spec, storage_url)

    ranked = rank_configurations(source.trials, source.direction)
    inside = [config.trial for config in ranked if config.trial.params["optimizer"] != "sgd"][
        : warm_start.BEST_QUEUED
    ]
    assert transfer.queued == [trial.number for trial in inside]
    finished = [t for t in source.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    sgd = [t for t in finished if t.params["optimizer"] == "sgd"]
    assert sgd and transfer.copied == len(finished) - len(sgd) and transfer.skipped == len(sgd)
    assert "(its range differs)" in "; ".join(transfer.reasons)
    assert study.user_attrs["warm_start"][earlier.name]["copied"] == transfer.copied
    assert earlier.name in transfer.describe()

    run_worker(spec, storage_url)
    trials = study.get_trials()
    copies = [t for t in trials if COPIED_FROM in t.user_attrs]
    trained = [t for t in trials if COPIED_FROM not in t.user_attrs]
    assert len(trained) == spec.budget.trials  # copies are outside the budget
    # The queued best configurations were the first trials trained, as they were found.
    for trial, original in zip(trained, inside, strict=False):
        assert trial.params == original.params
        assert trial.user_attrs["warm_start"] == {"study": earlier.name, "trial": original.number}
    for copy in copies:
        original = source.trials[copy.user_attrs[COPIED_FROM]["trial"]]
        assert (copy.state, copy.value, copy.params) == (
            original.state,
            original.value,
            original.params,
        )
        assert copy.distributions == original.distributions
        assert copy.intermediate_values == original.intermediate_values
        # Constrained samplers read a diverged copy as infeasible, as they read the original.
        constraint = internals.constraint_attr("diverged")
        assert copy.system_attrs[constraint] == original.system_attrs[constraint]
    # A copy never wins, nor is it the best value `tuner status` shows: it was trained elsewhere.
    assert tuner.best_config(later_name, storage=storage_url).trial_number in {
        t.number for t in trained
    }
    assert main(["status", later_name, "--storage", storage_url]) == 0
    best = min(t.value for t in trained if t.state is TrialState.COMPLETE)
    assert f"best loss: {best:.5g} (minimize)" in capsys.readouterr().out


def test_trials_of_another_length_are_not_copied_but_the_best_still_run(
    storage_url: str, earlier: StudySpec, later_name: str
) -> None:
    spec = _spec(later_name, warm=[earlier.name], budget={"trials": 8, "epochs": 3})
    study, [transfer] = create_study(spec, storage_url)
    assert transfer.copied == 0 and transfer.queued
    assert "trials trained 2 epochs there, 3 here" in transfer.reasons
    assert not [t for t in study.trials if COPIED_FROM in t.user_attrs]


def test_a_missing_warm_start_study_exits_2_listing_the_studies(
    storage_url: str, earlier: StudySpec, later_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_cli import QUICKSTART

    args = ["run", str(QUICKSTART), "--storage", storage_url, "--set", f"name='{later_name}'"]
    assert main([*args, "--warm-start", "no-such-study"]) == 2
    error = capsys.readouterr().err
    assert "[search] warm_start: no study named 'no-such-study'" in error
    assert earlier.name in error.split("studies there:")[1]
    assert later_name not in optuna.get_all_study_names(storage_url)


def test_a_warm_start_from_another_workload_or_metric_is_refused_naming_both(
    storage_url: str, earlier: StudySpec, later_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_cli import QUICKSTART

    # quickstart starts Rosenbrock from (-1, 1) with 100 steps an epoch; `earlier` does not.
    args = ["run", str(QUICKSTART), "--storage", storage_url, "--set", f"name='{later_name}'"]
    assert main([*args, "--warm-start", earlier.name]) == 2
    error = capsys.readouterr().err
    assert f"study '{earlier.name}' trains rosenbrock {{'steps_per_epoch': 20}}" in error
    assert f"but '{later_name}' trains rosenbrock {{'start': [-1.0, 1.0]" in error
    assert later_name not in optuna.get_all_study_names(storage_url)

    other = _spec(later_name, warm=[earlier.name], direction="maximize")
    with pytest.raises(SpecError, match=r"for loss \(minimize\), but .* for loss \(maximize\)"):
        warm_start.check_sources(other, open_storage(storage_url), storage_url)


def test_another_metric_is_refused(sqlite_url: str) -> None:
    data = {
        "workload": {"name": "cnn", "options": {"dataset": "digits"}},
        "budget": {"trials": 2},
    }
    source = parse_spec({**data, "name": "by-loss", "metric": "val_loss"})
    studies.create_or_resume(source, open_storage(sqlite_url))
    spec = parse_spec({**data, "name": "by-accuracy", "search": {"warm_start": ["by-loss"]}})
    with pytest.raises(SpecError, match=r"for val_loss \(minimize\), but .* for val_accuracy"):
        warm_start.check_sources(spec, open_storage(sqlite_url), sqlite_url)


def test_a_study_cannot_warm_start_from_itself_or_change_its_sources(
    storage_url: str, earlier: StudySpec
) -> None:
    with pytest.raises(SpecError, match="cannot warm-start from itself"):
        _spec(earlier.name, warm=[earlier.name])
    # An existing study is resumed as it was seeded, never seeded again.
    with pytest.raises(SpecError, match="a warm start seeds a new study"):
        studies.create_or_resume(_spec(earlier.name, warm=["x"]), open_storage(storage_url))
    with pytest.raises(StudyNotFoundError):
        warm_start.check_sources(_spec("new", warm=["x"]), open_storage(storage_url), storage_url)


@pytest.mark.workers
def test_tuner_run_warm_starts_and_confirms(
    local_ray: None, sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole path a user takes: a study, then a second one warm-started from it and
    confirmed, with what came from where printed."""
    body = """
workload = { name = "double_well", options = { steps_per_epoch = 20, noise = 1.0 } }
[search]
optimizers = ["sgd", "adam"]
weight_decay = "off"
[budget]
trials = 6
epochs = 2
[execution]
workers = 1
"""
    first, second = tmp_path / "first.toml", tmp_path / "second.toml"
    first.write_text('name = "first"' + body)
    second.write_text('name = "second"' + body)
    assert main(["run", str(first), "--storage", sqlite_url]) == 0
    capsys.readouterr()
    args = ["run", str(second), "--storage", sqlite_url, "--warm-start", "first"]
    assert main([*args, "--confirm", "2x2"]) == 0
    out = capsys.readouterr().out
    assert "Warm start from first: best configurations of trials" in out
    assert "Confirming the top 2 configurations" in out and "4 runs queued" in out

    study = optuna.load_study(study_name="second", storage=sqlite_url)
    assert study.user_attrs["spec"]["search"]["warm_start"] == ["first"]
    assert "first" in study.user_attrs["warm_start"]
    assert sum("confirms" in t.user_attrs for t in study.trials) == 4
    assert all(t.state.is_finished() for t in study.trials)
    best = tuner.best_config("second", storage=sqlite_url)
    assert best.confirmed and best.seeds == 2
