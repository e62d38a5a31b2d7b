"""Confirmation on fresh seeds: the top configurations re-trained after the search, and every
view ranking by the mean over those seeds, on real SQLite and PostgreSQL studies."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

import tuner
from tests.specs import build_spec
from tuner.cli import main
from tuner.config import TrainingConfig
from tuner.execution.train import EpochResult, TrainingRecord, close_epoch
from tuner.execution.worker import run_worker
from tuner.runner import queued_only
from tuner.spec import StudySpec
from tuner.storage.rdb import open_storage
from tuner.study import confirmation
from tuner.study import lifecycle as studies
from tuner.study.results import CONFIRMS, COPIED_FROM, WARM_START, rank_configurations
from tuner.views.display import describe_ranked
from tuner.views.report import write_report


def _spec(name: str, **budget: Any) -> StudySpec:
    """A noisy double well: the trial's seed drives the gradient noise, so seeds differ."""
    return build_spec(
        name=name,
        workload={"name": "double_well", "options": {"steps_per_epoch": 20, "noise": 1.0}},
        search={"optimizers": ["sgd", "momentum", "adam"], "weight_decay": "off"},
        budget={"trials": 8, "epochs": 3, **budget},
        # Stops any trial below the median at any epoch: confirmation runs must be spared.
        pruner={"name": "median", "n_startup_trials": 0, "n_warmup_steps": 0},
    )


def test_the_top_configurations_are_retrained_on_fresh_seeds_outside_the_budget(
    storage_url: str, study_name: str, tmp_path: Path
) -> None:
    spec = _spec(study_name, confirm={"top": 2, "seeds": 3})
    study = studies.create_or_resume(spec, open_storage(storage_url))
    run_worker(spec, storage_url)
    search = [t for t in study.get_trials() if t.state is TrialState.COMPLETE]
    top = sorted(search, key=lambda t: t.value)[:2]

    queued = confirmation.queue_runs(study, spec)
    assert queued.trials == tuple(t.number for t in top) and queued.runs == 6
    run_worker(queued_only(study, spec), storage_url)

    trials = study.get_trials()
    runs = [t for t in trials if CONFIRMS in t.user_attrs]
    assert len(runs) == 6 and len(trials) == 8 + 6  # no search trial beyond the budget
    for original in top:
        mine = [t for t in runs if t.user_attrs[CONFIRMS] == original.number]
        assert len(mine) == 3
        for run in mine:
            assert run.params == original.params  # the same configuration ...
            assert run.state is TrialState.COMPLETE  # ... trained to the end, never pruned
            assert run.user_attrs["epochs_run"] == spec.budget.epochs
        seeds = {run.user_attrs["seed"] for run in mine} | {original.user_attrs["seed"]}
        assert len(seeds) == 4  # on fresh seeds
    # Queueing again tops up nothing, and no worker claims a new trial.
    assert confirmation.queue_runs(study, spec).runs == 0
    assert studies.claim_trial(study, spec) is None

    best = tuner.best_config(study_name, storage=storage_url)
    ranked = rank_configurations(study.trials, study.direction)
    means = {
        number: statistics.fmean(
            t.value for t in runs if t.user_attrs[CONFIRMS] == number and t.value is not None
        )
        for number in queued.trials
    }
    winner = min(means, key=means.__getitem__)
    assert best.trial_number == winner == ranked[0].trial.number
    assert best.confirmed and best.seeds == 3 and best.failed_seeds == 0
    assert best.mean == pytest.approx(means[winner], rel=1e-12)
    assert best.value == pytest.approx(study.trials[winner].value, rel=1e-12)

    # The report ranks the same way and shows the spread over the seeds.
    page = write_report(study_name, tmp_path / "report", storage_url).read_text()
    assert f"trial {winner}: loss = " in page
    assert describe_ranked(ranked[0]) in page and "over 3 fresh seeds" in page


def _config(optimizer: str) -> dict[str, Any]:
    return TrainingConfig(
        optimizer=optimizer, target="torch.optim:SGD", learning_rate=0.01
    ).to_dict()


def _trial(
    value: float | None,
    optimizer: str = "sgd",
    state: TrialState = TrialState.COMPLETE,
    **user_attrs: Any,
) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        state=state,
        value=value,
        params={"optimizer": optimizer, "learning_rate": 0.01},
        distributions={
            "optimizer": CategoricalDistribution(["sgd", "adam"]),
            "learning_rate": FloatDistribution(1e-4, 1.0, log=True),
        },
        user_attrs={"config": _config(optimizer), **user_attrs},
    )


@pytest.fixture
def confirmed_study(storage_url: str, study_name: str) -> str:
    """Trials 0-3 are the search's; 0 was lucky, 1 holds up, 2 was never confirmed, 3
    diverged on a fresh seed; 4 is a warm-start copy that was trained elsewhere."""
    study = optuna.create_study(study_name=study_name, storage=storage_url)
    study.set_user_attr("metric", "loss")
    study.add_trials(
        [
            _trial(0.10),
            _trial(0.20, "adam"),
            _trial(0.30),
            _trial(0.05),
            _trial(0.01, **{COPIED_FROM: {"study": "earlier", "trial": 7}}),
            _trial(0.50, **{CONFIRMS: 0}),
            _trial(0.70, **{CONFIRMS: 0}),
            _trial(0.30, "adam", **{CONFIRMS: 1}),
            _trial(0.25, "adam", **{CONFIRMS: 1}),
            _trial(0.02, **{CONFIRMS: 3}),
            _trial(None, state=TrialState.FAIL, fail_reason="diverged in epoch 1", **{CONFIRMS: 3}),
        ]
    )
    return storage_url


def test_rankings_use_the_mean_over_fresh_seeds(
    confirmed_study: str, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    study = optuna.load_study(study_name=study_name, storage=confirmed_study)
    # Confirmed and held up, by mean; never confirmed; failed on a fresh seed. The copy
    # (value 0.01) and the lucky search value (0.05) never win.
    assert [
        config.trial.number for config in rank_configurations(study.trials, study.direction)
    ] == [1, 0, 2, 3]

    best = tuner.best_config(study_name, storage=confirmed_study)
    assert (best.trial_number, best.optimizer, best.value) == (1, "adam", 0.20)
    assert best.confirmed and best.seeds == 2 and best.failed_seeds == 0
    assert best.mean == pytest.approx(0.275, rel=1e-12)
    assert best.spread == pytest.approx(statistics.stdev([0.30, 0.25]), rel=1e-12)
    sgd = tuner.best_config(study_name, optimizer="sgd", storage=confirmed_study)
    assert (sgd.trial_number, sgd.mean, sgd.seeds) == (0, pytest.approx(0.6, rel=1e-12), 2)

    assert main(["best", study_name, "--storage", confirmed_study]) == 0
    out = capsys.readouterr().out
    assert "Best of study" in out and "(trial 1)" in out
    assert "0.275 ± 0.035 over 2 fresh seeds" in out and "never confirmed" not in out


def test_a_study_never_confirmed_says_so(
    storage_url: str, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    study = optuna.create_study(study_name=study_name, storage=storage_url)
    study.add_trials([_trial(0.3), _trial(0.2, "adam")])
    best = tuner.best_config(study_name, storage=storage_url)
    assert (best.trial_number, best.value, best.confirmed) == (1, 0.2, False)
    assert (best.seeds, best.mean, best.spread) == (0, None, None)
    assert main(["best", study_name, "--storage", storage_url]) == 0
    out = capsys.readouterr().out
    assert "not confirmed (one run on one seed)" in out
    assert f"Study {study_name} was never confirmed" in out and "--confirm 3x3" in out
    assert main(["best", study_name, "--json", "--storage", storage_url]) == 0
    assert '"confirmed": false' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--trials", "2", "--confirm", "3x2"],
            "budget: confirm top = 3 is more configurations than the 2 trials",
        ),
        (["--set", "budget.confirm={top=0}"], "[budget.confirm] top: Input should be greater"),
    ],
)
def test_a_confirmation_larger_than_the_budget_exits_2_and_writes_nothing(
    sqlite_url: str, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_cli import QUICKSTART

    assert main(["run", str(QUICKSTART), "--storage", sqlite_url, *args]) == 2
    error = capsys.readouterr().err
    assert error.startswith("tuner: error: ") and message in error
    assert optuna.get_all_study_names(sqlite_url) == []


@pytest.mark.parametrize("text", ["3", "0x3", "3x", "axb"])
def test_a_malformed_confirm_flag_is_a_usage_error(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_cli import QUICKSTART

    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(QUICKSTART), "--confirm", text])
    assert exit_info.value.code == 2
    assert "expected TOPxSEEDS" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("marker", "spared"), [(None, False), (CONFIRMS, True), (WARM_START, False)]
)
def test_only_confirmation_runs_escape_the_pruner(
    sqlite_url: str, marker: str | None, spared: bool
) -> None:
    """A pruner that stops every trial (any loss above 0) spares confirmation runs, there to
    measure a final value; a warm start's queued best is a search trial, and screened."""
    spec = _spec("pruning")
    study = optuna.create_study(
        study_name="pruning", storage=sqlite_url, pruner=optuna.pruners.ThresholdPruner(upper=0.0)
    )
    study.enqueue_trial({}, user_attrs={marker: 0} if marker else None)
    trial = study.ask()
    result = EpochResult(
        train_loss=1.0,
        parameter_norm=1.0,
        metrics={"loss": 1.0},
        learning_rate=0.1,
        start_loss=1.0,
    )
    if spared:
        assert close_epoch(trial, spec, TrainingRecord(), 1, result) == 1.0
    else:
        with pytest.raises(optuna.TrialPruned):
            close_epoch(trial, spec, TrainingRecord(), 1, result)


def test_confirming_a_study_with_fewer_completed_trials_than_asked_says_so(
    sqlite_url: str,
) -> None:
    spec = _spec("short", confirm={"top": 3, "seeds": 2})
    study = optuna.create_study(study_name="short", storage=sqlite_url)
    study.add_trial(_trial(None, state=TrialState.FAIL, fail_reason="diverged in epoch 1"))
    nothing = confirmation.queue_runs(study, spec)
    assert nothing.runs == 0 and nothing.describe(2).startswith("Nothing to confirm")
    study.add_trial(_trial(0.4))
    one = confirmation.queue_runs(study, spec)
    assert (one.trials, one.runs) == ((1,), 2)
    assert "confirm asked for 3, but only 1 trial completed" in one.describe(2)
