"""Every example runs as examples/README.md says, with small budgets: tuned with `tuner run`,
then trained with the winner by its own script through `tuner.best_config()`."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tuner.cli import main
from tuner.storage.rdb import open_storage

ROOT = Path(__file__).parent.parent
README = ROOT / "examples" / "README.md"
#: What the README's commands get added here so that the test stays quick: two trials of one
#: epoch, on two workers of one CPU each (two torch threads per trial on a shared 2-core
#: machine made the tiny ViT's steps many times slower than one).
SMALL_BUDGET = ["--trials", "2", "--set", "budget.epochs=1", "--workers", "2"]


def readme_commands() -> list[list[str]]:
    """The commands of each fenced bash block in examples/README.md."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    return [block.strip().splitlines() for block in blocks]


@pytest.mark.workers
@pytest.mark.parametrize("commands", readme_commands(), ids=lambda c: c[0].split("/")[1])
def test_an_example_tunes_then_trains_with_the_winner(
    local_ray: None,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    commands: list[str],
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("TUNER_STORAGE", sqlite_url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tune, retrain = (shlex.split(command) for command in commands)
    assert tune[:2] == ["tuner", "run"] and retrain[0] == "python"

    assert main([*tune[1:], *SMALL_BUDGET]) == 0
    name = tune[2].split("/")[1]
    study = optuna.load_study(study_name=f"example-{name}", storage=open_storage(sqlite_url))
    assert len(study.trials) == 2
    assert any(trial.state == TrialState.COMPLETE for trial in study.trials)
    # Each example searches parameters of its own model beside the optimizer's.
    assert all(trial.user_attrs["config"]["params"] for trial in study.trials)

    result = subprocess.run(
        [sys.executable, *retrain[1:], "--epochs", "1"],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"best of the study: {study.best_trial.params['optimizer']}" in result.stdout
    assert "trained with the winner for 1 epochs" in result.stdout
