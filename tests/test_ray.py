"""`tuner.run()` on a real local Ray instance: workers as Ray tasks over one study."""

from __future__ import annotations

import os
from collections.abc import Callable

import optuna
import pytest
from optuna.trial import TrialState

import tuner
from tuner.runner import with_overrides
from tuner.spec import StudySpec
from tuner.storage import open_storage

pytestmark = pytest.mark.ray


def test_run_spends_the_budget_with_ray_workers(
    local_ray: None, storage_url: str, study_name: str, make_spec: Callable[..., StudySpec]
) -> None:
    spec = make_spec(
        name=study_name,
        workload={"name": "double_well", "options": {"steps_per_epoch": 20, "noise": 1.0}},
        search={"optimizers": ["sgd", "momentum", "adam"], "weight_decay": "off"},
        budget={"trials": 20, "epochs": 3},
        execution={"workers": 2, "gpus_per_trial": "auto"},
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


def test_a_worker_uses_the_cpus_it_holds_at_niceness_0(
    local_ray: None, sqlite_url: str, make_spec: Callable[..., StudySpec]
) -> None:
    """One worker on this machine trains with a thread per CPU it may use (none left idle),
    and Ray's default niceness (15) is not applied to it."""
    import ray

    from tuner.execution.ray import usable_cpus

    ray.shutdown()  # the shared instance was started without tuner's settings
    spec = make_spec(
        name="probe",
        metric="loss",
        direction="minimize",
        workload={"name": "tests.workloads:process_probe"},
        search={"optimizers": ["sgd"], "weight_decay": "off"},
        budget={"trials": 1, "epochs": 1},
        execution={"workers": 1, "storage": sqlite_url},
    )
    try:
        tuner.run(spec)
    finally:
        ray.shutdown()
    (trial,) = optuna.load_study(study_name="probe", storage=sqlite_url).trials
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("fail_reason")
    (epoch,) = trial.user_attrs["curve"]
    assert epoch["torch_threads"] == usable_cpus()
    assert epoch["niceness"] == os.getpriority(os.PRIO_PROCESS, 0)  # the driver's own
