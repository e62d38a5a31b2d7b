"""`tuner.run()` on a real local Ray instance: workers as Ray tasks over one study."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

import tuner
from tuner.runner import with_overrides
from tuner.spec import parse_spec
from tuner.storage import open_storage

pytestmark = pytest.mark.ray


def test_run_spends_the_budget_with_ray_workers(
    local_ray: None, storage_url: str, study_name: str
) -> None:
    spec = parse_spec(
        {
            "name": study_name,
            "workload": {"name": "double_well", "options": {"steps_per_epoch": 20, "noise": 1.0}},
            "search": {"optimizers": ["sgd", "momentum", "adam"], "weight_decay": "off"},
            "budget": {"trials": 20, "epochs": 3},
            "execution": {"workers": 2, "gpus_per_trial": "auto"},
        }
    )
    ticks: list[int] = []
    study = tuner.run(
        with_overrides(spec, storage=storage_url),
        on_tick=lambda: ticks.append(1),
    )
    trials = optuna.load_study(study_name=study_name, storage=open_storage(storage_url)).trials
    assert len(trials) == 20 and study.study_name == study_name
    assert all(trial.state.is_finished() for trial in trials)
    assert {trial.user_attrs["worker"].rsplit("-", 1)[-1] for trial in trials} <= {"0", "1"}
    assert any(trial.state == TrialState.COMPLETE for trial in trials)
    assert ticks, "the progress callback was never called"
