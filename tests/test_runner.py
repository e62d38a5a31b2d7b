"""The driver side of a run without Ray: command-line overrides, the refusals that come before
anything is written, creating or resuming the study, and the budget of confirmation runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from tuner.errors import SpecError, StorageError
from tuner.runner import create_study, queued_only, run, with_overrides
from tuner.spec import StudySpec
from tuner.storage.rdb import OUTSIDE_BUDGET_KEY

MakeSpec = Callable[..., StudySpec]


def test_no_override_is_the_same_spec(make_spec: MakeSpec) -> None:
    spec = make_spec()
    assert with_overrides(spec) is spec
    assert with_overrides(spec, warm_start=[]) is spec


def test_the_command_line_beats_the_file(make_spec: MakeSpec) -> None:
    spec = make_spec(execution={"workers": 3, "storage": "sqlite:///file.db"})
    changed = with_overrides(spec, workers=1, storage="sqlite:///line.db", trials_per_worker=2)
    assert changed.execution.workers == 1 and changed.execution.trials_per_worker == 2
    assert changed.execution.storage == "sqlite:///line.db"
    assert changed.search == spec.search and changed.budget == spec.budget
    assert spec.execution.workers == 3  # the file's spec is left as it was


def test_warm_starts_add_to_the_files_once_each(make_spec: MakeSpec) -> None:
    spec = make_spec(search={"warm_start": ["first"]})
    changed = with_overrides(spec, warm_start=["second", "first", "second"])
    assert changed.search.warm_start == ["first", "second"]


def test_a_bad_override_is_a_spec_error_like_the_same_key_in_the_file(
    make_spec: MakeSpec,
) -> None:
    with pytest.raises(SpecError, match=r"workers"):
        with_overrides(make_spec(), workers=0)


def test_sqlite_on_a_cluster_is_refused_before_anything_is_written(
    tmp_path: Path, make_spec: MakeSpec
) -> None:
    database = tmp_path / "studies.db"
    spec = make_spec(execution={"storage": f"sqlite:///{database}", "ray_address": "10.0.0.1:6379"})
    with pytest.raises(StorageError, match=r"SQLite serves one machine.*--storage postgresql"):
        run(spec)
    assert not database.exists()


def test_create_study_resumes_without_a_second_warm_start(
    sqlite_url: str, make_spec: MakeSpec
) -> None:
    spec = make_spec(name="again")
    study, transfers = create_study(spec, sqlite_url)
    study.enqueue_trial({"optimizer": "sgd"})
    resumed, transfers_again = create_study(spec, sqlite_url)
    assert transfers == transfers_again == []
    assert resumed.study_name == "again" and len(resumed.trials) == 1


def test_confirmation_runs_get_a_budget_of_the_trials_already_made(
    sqlite_url: str, make_spec: MakeSpec
) -> None:
    spec = make_spec(budget={"trials": 10, "confirm": {"top": 1, "seeds": 2}})
    study, _ = create_study(spec, sqlite_url)
    for _ in range(3):
        study.add_trial(optuna.trial.create_trial(value=1.0))
    queued = optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, system_attrs={OUTSIDE_BUDGET_KEY: True}
    )
    study.add_trial(queued)
    only = queued_only(study, spec)
    assert only.budget.trials == 3 and only.budget.confirm is None
    assert only.search == spec.search and only.name == spec.name
