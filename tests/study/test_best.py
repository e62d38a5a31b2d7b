"""`best_config()` from another project: the winner, rebuilt into a working optimizer."""

from __future__ import annotations

from collections.abc import Callable

import optuna
import pytest
import torch

import tuner
from tuner.errors import EmptyStudyError, StudyNotFoundError
from tuner.execution.worker import run_worker
from tuner.search.optimizers import import_target
from tuner.search.schedules import WARMUP_START_FACTOR
from tuner.spec import StudySpec
from tuner.storage.rdb import open_storage
from tuner.study import lifecycle as studies


@pytest.fixture
def finished_study(sqlite_url: str, make_spec: Callable[..., StudySpec]) -> str:
    spec = make_spec(
        name="regression",
        workload={"name": "linear_regression", "options": {"samples": 200}},
        search={
            "optimizers": ["momentum", "adamw"],
            "schedules": ["constant", "warmup_cosine"],
            "batch_sizes": [16, 32],
        },
        budget={"trials": 10, "epochs": 2},
        pruner={"name": "none"},
    )
    studies.create_or_resume(spec, open_storage(sqlite_url))
    run_worker(spec, sqlite_url)
    return sqlite_url


def test_best_config_is_the_best_completed_trial(finished_study: str) -> None:
    study = optuna.load_study(study_name="regression", storage=finished_study)
    config = tuner.best_config("regression", storage=finished_study)
    assert config.trial_number == study.best_trial.number
    assert config.value == pytest.approx(study.best_value)
    assert (config.metric, config.direction, config.study) == ("val_loss", "minimize", "regression")
    assert config.learning_rate == study.best_trial.user_attrs["config"]["learning_rate"]
    assert config.batch_size in (16, 32)


def test_printed_it_is_a_few_readable_lines(finished_study: str) -> None:
    config = tuner.best_config("regression", storage=finished_study)
    lines = str(config).splitlines()
    assert lines[0] == f"Best of study regression (trial {config.trial_number}):"
    assert len(lines) <= 20 and max(len(line) for line in lines) <= 80, str(config)
    shown = dict(line.split(None, 1) for line in lines[1:])
    assert shown["optimizer"] == f"{config.optimizer}  [{config.target}]"
    assert float(shown["learning_rate"]) == pytest.approx(config.learning_rate, rel=1e-5)
    assert float(shown[config.metric].split()[0]) == pytest.approx(config.value, rel=1e-5)
    assert "trial_number=" in repr(config)  # repr keeps every field, for debugging


def test_best_config_per_optimizer_type(finished_study: str) -> None:
    study = optuna.load_study(study_name="regression", storage=finished_study)
    for name in ("momentum", "adamw"):
        complete = [
            trial
            for trial in study.trials
            if trial.state.is_finished()
            and trial.value is not None
            and trial.params["optimizer"] == name
        ]
        if not complete:
            continue
        config = tuner.best_config("regression", optimizer=name, storage=finished_study)
        assert config.optimizer == name
        assert config.value == pytest.approx(min(trial.value for trial in complete))
    with pytest.raises(EmptyStudyError, match="of optimizer 'lion'"):
        tuner.best_config("regression", optimizer="lion", storage=finished_study)


def test_the_config_builds_a_working_optimizer_and_schedule(finished_study: str) -> None:
    config = tuner.best_config("regression", storage=finished_study)
    model = torch.nn.Linear(3, 1)
    optimizer = config.build_optimizer(model.parameters())
    assert isinstance(optimizer, import_target(config.target))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(config.learning_rate)
    scheduler = config.build_scheduler(optimizer, steps_per_epoch=4, epochs=2)
    warming_up = config.schedule == "warmup_cosine"
    start = config.learning_rate * (WARMUP_START_FACTOR if warming_up else 1.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(start)
    before = model.weight.detach().clone()
    inputs, targets = torch.randn(8, 3), torch.randn(8, 1)
    for _ in range(8):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()
        scheduler.step()
    assert not torch.equal(before, model.weight)


def test_the_environment_variable_names_the_storage(
    finished_study: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNER_STORAGE", finished_study)
    assert tuner.best_config("regression").study == "regression"


def test_unknown_study_lists_the_studies_there_are(finished_study: str) -> None:
    with pytest.raises(StudyNotFoundError, match="studies there: regression"):
        tuner.best_config("regresion", storage=finished_study)
    with pytest.raises(KeyError):  # a StudyNotFoundError is also a KeyError
        tuner.best_config("regresion", storage=finished_study)


def test_a_study_without_completed_trials_says_so(sqlite_url: str) -> None:
    optuna.create_study(study_name="empty", storage=sqlite_url)
    assert tuner.EmptyStudyError is EmptyStudyError and "EmptyStudyError" in tuner.__all__
    with pytest.raises(tuner.EmptyStudyError, match="no completed trial"):
        tuner.best_config("empty", storage=sqlite_url)
