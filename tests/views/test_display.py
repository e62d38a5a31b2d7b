"""What the terminal shows: the summary after a run, `tuner status`, and how knobs, configs
and fresh-seed results are written, read from real SQLite studies into a recording console."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from rich.console import Console

from tests.study.test_results import study_with, trial
from tuner.config import TrainingConfig
from tuner.storage.rdb import resolve_storage_url
from tuner.study.results import CONFIRMS, COPIED_FROM
from tuner.views.display import (
    StudyProgress,
    describe_config,
    describe_seeds,
    format_knob,
    format_value,
    print_status,
    print_summary,
    storage_option,
    tuner_command,
)


def console() -> Console:
    return Console(record=True, width=80, color_system=None)


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.9, "0.9"), (0.99977, "0.99977"), (0.99999, "0.99999"), (0.5, "0.5"), (3e-4, "0.0003")],
)
def test_knobs_near_one_keep_the_digits_that_tell_them_apart(value: float, text: str) -> None:
    assert format_knob(value) == text


def test_a_value_is_short_and_a_missing_one_a_dash() -> None:
    assert format_value(0.123456789) == "0.12346" and format_value(None) == "—"


def test_a_configuration_on_one_line() -> None:
    config = TrainingConfig(
        optimizer="adamw",
        target="torch.optim:AdamW",
        learning_rate=0.00123,
        weight_decay=0.01,
        hyperparameters={"beta2": 0.9995, "amsgrad": False},
        schedule="warmup_cosine",
        max_grad_norm=1.0,
        batch_size=64,
        lookahead=(5, 0.5),
    )
    assert describe_config(config) == (
        "lr=0.00123, beta2=0.9995, wd=0.01, warmup_cosine, clip=1, batch=64, lookahead(k=5, α=0.5)"
    )
    sgd = TrainingConfig(optimizer="momentum", target="torch.optim:SGD", learning_rate=0.1)
    assert describe_config(sgd) == "lr=0.1, constant"
    assert describe_config(None) == ""


@pytest.mark.parametrize(
    ("args", "text"),
    [
        ((None, None, 0, 0), "not confirmed (one run on one seed)"),
        ((0.98123, 0.0041, 3, 0), "0.98123 ± 0.0041 over 3 fresh seeds"),
        ((0.5, None, 2, 1), "0.5 over 1 fresh seed, failed on 1 of 2 fresh seeds"),
        ((None, None, 2, 2), "failed on 2 of 2 fresh seeds"),
    ],
)
def test_fresh_seed_results_in_words(args: tuple, text: str) -> None:
    assert describe_seeds(*args) == text


def test_the_summary_names_the_best_each_optimizers_best_and_where_the_study_is(
    sqlite_url: str,
) -> None:
    study = study_with(
        sqlite_url,
        [
            trial("sgd", 0.4),
            trial("adam", 0.2),
            trial("lion", None, TrialState.FAIL, fail_reason="diverged in epoch 1"),
            trial("adam", 0.19, **{CONFIRMS: 1}),
            trial("sgd", 0.1, **{COPIED_FROM: {"study": "earlier", "trial": 0}}),
        ],
    )
    out = console()
    assert print_summary(out, study, sqlite_url)
    text = out.export_text()
    assert "results: 5 trials: 5 complete, 0 pruned, 1 failed" not in text  # counts are true
    assert "results: 5 trials: 4 complete, 0 pruned, 1 failed (1 copied by a warm start, 1 " in (
        text.replace("\n", " ")
    )
    assert "Best: trial 1, loss = 0.2 with adam (lr=0.1, constant); 0.19 over 1 fresh seed" in (
        " ".join(text.split())
    )
    rows = [line.split() for line in text.splitlines()]
    # complete/pruned/diverged/failed
    assert rows_of(rows, "adam")[:4] == ["adam", "0.2", "1", "1/0/0/0"]
    assert rows_of(rows, "sgd")[:4] == ["sgd", "0.4", "0", "1/0/0/0"]
    assert rows_of(rows, "lion")[:4] == ["lion", "—", "—", "0/0/0/1"]
    assert f"tuner best results --storage {sqlite_url}" in text.replace("\n", "")


def rows_of(rows: list[list[str]], name: str) -> list[str]:
    return next(row for row in rows if row and row[0] == name)


def test_a_study_with_nothing_complete_says_why(sqlite_url: str) -> None:
    study = study_with(
        sqlite_url, [trial("sgd", None, TrialState.FAIL, fail_reason="diverged in epoch 2")]
    )
    out = console()
    assert not print_summary(out, study, sqlite_url)
    text = out.export_text()
    assert "No trial completed." in text and "trial 0: diverged in epoch 2" in text
    empty = optuna.create_study(study_name="empty", storage=sqlite_url)
    assert not print_summary(out, empty, sqlite_url)
    assert "No trial ran: the study has nothing to report." in out.export_text()


def test_a_storage_option_only_where_a_bare_command_would_not_find_the_study(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert storage_option(resolve_storage_url()) == ""
    secret = "postgresql+psycopg://me:hunter2@db.example/tuner"
    assert storage_option(secret) == " --storage 'postgresql+psycopg://me:***@db.example/tuner'"
    monkeypatch.setenv("TUNER_STORAGE", secret)
    assert storage_option(secret) == ""


def test_status_counts_running_trials_and_names_retries(sqlite_url: str) -> None:
    study = study_with(sqlite_url, [trial("sgd", 0.5), trial("adam", None, TrialState.FAIL)])
    retry = optuna.trial.create_trial(
        state=TrialState.RUNNING,
        params={"optimizer": "adam"},
        distributions=study.trials[1].distributions,
        user_attrs={
            "worker": "run-1-0",
            "node": "here",
            "resumed_from": {"trial": 1, "epoch": 7},
        },
        system_attrs={"failed_trial": 1},
    )
    study.add_trial(retry)
    out = console()
    print_status(out, study)
    text = out.export_text()
    assert "results: 3 trials: 1 running, 1 complete, 0 pruned, 1 failed" in text
    assert "best loss: 0.5 (minimize)" in text
    assert "retries: 1 (trial 2 retries trial 1)" in text
    assert "resumed from checkpoints: 1 (trial 2 from trial 1 after epoch 7)" in text
    assert "Running trials" in text and "run-1-0" in text and "here" in text


def test_the_commands_the_output_suggests_work_when_pasted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """After `make demo` the virtual environment is not activated: the hints name its script
    (which runs), and plain `tuner` once PATH finds this installation's own."""
    scripts = Path(sys.executable).parent
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    command = tuner_command()
    assert command == str(scripts / "tuner")
    assert subprocess.run([command, "--help"], capture_output=True, timeout=60).returncode == 0
    monkeypatch.setenv("PATH", f"{scripts}:/usr/bin:/bin")
    assert tuner_command() == "tuner"


def _diverged(optimizer: str) -> optuna.trial.FrozenTrial:
    return trial(optimizer, math.inf, diverged="diverged in epoch 2: loss inf")


def test_a_run_shows_the_first_few_divergences_as_they_come_and_its_summary_counts_them(
    sqlite_url: str,
) -> None:
    """Each thing once: the run prints the first divergences above its bar, then counts the
    rest there; the summary only counts them (`tuner status` lists them); a resumed study's
    old ones are not printed as news."""
    study = study_with(sqlite_url, [trial("sgd", 0.5), _diverged("adam")])
    shown_on = console()
    with StudyProgress(shown_on, budget=8) as progress:
        progress.start(study, sqlite_url)
        study.add_trials([_diverged("lion") for _ in range(5)])
        progress.tick()
        progress.tick()
    shown = shown_on.export_text()
    assert "trial 1 (adam)" not in shown  # there before this run
    assert [line for line in shown.splitlines() if "diverged in epoch 2" in line] == [
        f"trial {number} (lion) diverged in epoch 2: loss inf" for number in (2, 3, 4)
    ]
    assert shown.count("further divergences are counted on the bar") == 1

    summary = console()
    print_summary(summary, study, sqlite_url)
    text = summary.export_text()
    assert "diverged in epoch" not in text
    assert text.count("6 trials diverged (the sampler learns to avoid them): ") == 1
    assert "status results" in text
