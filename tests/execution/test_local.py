"""`tuner.run()` on local worker processes (tuner.execution.local), the backend of a study on
one machine: real processes forked from the fork server, over real databases."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import tuner
from tests.processes import alive, worker_processes
from tests.specs import probe_spec
from tests.test_faults import QUICKSTART, assert_finished_with_retries, running_by, wait_for
from tuner.errors import ExecutionError
from tuner.execution.local import GpuShares, device_names
from tuner.execution.resources import WORKER_RETRIES, usable_cpus
from tuner.runner import with_overrides
from tuner.spec import StudySpec
from tuner.storage.rdb import INTERRUPTED_KEY, open_storage


def local_probe(url: str, **options: str) -> StudySpec:
    """Four probe trials on two local workers (named: an earlier test may have left Ray
    running in this process), quick to notice a dead one."""
    return probe_spec(
        url, 4, options, workers=2, heartbeat_seconds=1, grace_seconds=3, backend="local"
    )


@pytest.mark.workers
def test_local_workers_spend_the_budget_in_the_drivers_environment(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each worker trains with its share of the CPUs at the driver's niceness, in a process
    group of its own, seeing no GPU (none is asked for), and in the environment the driver
    has when the run starts, not the one the fork server was started with."""
    from tuner.execution.local import warm_up

    warm_up()  # the server starts before the variable is set, as in `tuner run`
    monkeypatch.setenv("TUNER_PROBE", "7")
    ticks: list[int] = []
    tuner.run(local_probe(sqlite_url), on_tick=lambda: ticks.append(1))
    trials = optuna.load_study(study_name="probe", storage=sqlite_url).trials
    assert len(trials) == 4 and ticks
    assert {trial.user_attrs["worker"].rsplit("-", 1)[-1] for trial in trials} <= {"0", "1"}
    for trial in trials:
        assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("fail_reason")
        (epoch,) = trial.user_attrs["curve"]
        assert epoch["torch_threads"] == max(1, usable_cpus() // 2)
        assert epoch["own_process_group"] == 1.0 and epoch["probe_variable"] == 7.0
        assert epoch["no_gpu_visible"] == 1.0


@pytest.mark.workers
def test_tuner_run_forks_its_workers_from_the_driver(sqlite_url: str, tmp_path: Path) -> None:
    """The fork server is a fork of the `tuner run` driver, not a new interpreter: workers
    start with what the driver had imported (its progress display, which no worker imports),
    torch is not loaded a second time."""
    settings = [
        "workload={name='tests.workloads.factories:process_probe'}",
        "metric='loss'",
        "direction='minimize'",
    ]
    command = ["run", str(QUICKSTART), "--storage", sqlite_url, "--trials", "2"]
    command += [argument for setting in settings for argument in ("--set", setting)]
    done = subprocess.run(
        [sys.executable, "-m", "tuner.cli", *command],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    for trial in optuna.load_study(study_name="quickstart", storage=sqlite_url).trials:
        (epoch, *_) = trial.user_attrs["curve"]
        assert epoch["has_drivers_modules"] == 1.0


@pytest.mark.workers
def test_a_killed_local_worker_is_started_again_and_its_trial_retried(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A worker SIGKILLed mid-trial (as by the out-of-memory killer) is started again, as Ray
    retries its task, and its trial is retried with the same parameters."""
    marker = tmp_path / "killed"
    spec = local_probe(sqlite_url, kill_once=str(marker))
    tuner.run(spec)
    assert marker.exists()
    trials = optuna.load_study(study_name="probe", storage=sqlite_url).trials
    (retry,) = assert_finished_with_retries(trials, budget=4)
    assert retry.state == TrialState.COMPLETE


@pytest.mark.workers
def test_a_worker_that_keeps_dying_ends_the_run_in_one_error_and_no_trial_running(
    sqlite_url: str, make_spec: Callable[..., StudySpec]
) -> None:
    spec = make_spec(
        name="doomed",
        metric="loss",
        direction="minimize",
        workload={"name": "tests.workloads.factories:self_killing"},
        search={"optimizers": ["sgd"], "weight_decay": "off"},
        budget={"trials": 20, "epochs": 1},
        execution={"workers": 1, "storage": sqlite_url, "backend": "local"},
    )
    with pytest.raises(ExecutionError) as raised:
        tuner.run(spec)
    assert str(raised.value).startswith(
        f"worker 0 died {WORKER_RETRIES + 1} times (last: killed by SIGKILL)"
    )
    trials = optuna.load_study(study_name="doomed", storage=sqlite_url).trials
    # One trial per life of the worker, each interrupted and queued to re-run on resume.
    states = [trial.state for trial in trials]
    assert states.count(TrialState.FAIL) == states.count(TrialState.WAITING) == WORKER_RETRIES + 1
    assert TrialState.RUNNING not in states


@pytest.mark.workers
def test_ctrl_c_stops_local_workers_and_interrupts_their_trials(
    tuner_process: Callable[..., subprocess.Popen], sqlite_url: str
) -> None:
    """Ctrl-C reaches the driver, which stops its workers: each records its trial as
    interrupted (re-run on resume) and no worker is left running."""
    settings = ["budget.epochs=400", "pruner.name='none'"]
    arguments = [argument for setting in settings for argument in ("--set", setting)]
    driver = tuner_process("run", str(QUICKSTART), "--storage", sqlite_url, *arguments)

    def both_early_in_a_trial() -> bool:
        try:
            return len(running_by("quickstart", sqlite_url, before_epoch=200)) == 2
        except KeyError:  # no study yet
            return False

    wait_for(both_early_in_a_trial, 120, "both workers early in a trial")
    workers = worker_processes(driver.pid)
    assert len(workers) == 2
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=120) == 130
    assert not any(alive(pid) for pid in workers)
    trials = optuna.load_study(study_name="quickstart", storage=open_storage(sqlite_url)).trials
    assert not [trial for trial in trials if trial.state == TrialState.RUNNING]
    assert sum(INTERRUPTED_KEY in trial.system_attrs for trial in trials) == 2


@pytest.mark.parametrize(
    ("gpus", "share", "takes"),
    [
        (2, 0.5, [[0], [0], [1], [1], None]),
        (1, 0.3, [[0], [0], [0], None]),
        (4, 2.0, [[0, 1], [2, 3], None]),
        (2, 3.0, [None]),
        (0, 0.0, [[], [], []]),
    ],
    ids=["halves", "thirds-and-rest", "pairs", "too-many", "cpu"],
)
def test_gpu_shares_pack_workers_as_ray_does(
    gpus: int, share: float, takes: list[list[int] | None]
) -> None:
    shares = GpuShares(gpus, share)
    assert [shares.take() for _ in takes] == takes


@pytest.mark.parametrize(
    ("visible", "gpus", "names"),
    [(None, [1], "1"), (None, [0, 1], "0,1"), ("2,3", [1], "3"), ("GPU-ab,GPU-cd", [0], "GPU-ab")],
)
def test_a_worker_sees_its_gpus_among_those_the_driver_was_given(
    monkeypatch: pytest.MonkeyPatch, visible: str | None, gpus: list[int], names: str
) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert device_names(gpus) == names
    assert device_names([]) == ""


def test_a_gpu_share_given_back_is_taken_by_the_next_worker() -> None:
    shares = GpuShares(1, 1.0)
    first = shares.take()
    assert first == [0] and shares.take() is None
    shares.give_back(first)
    assert shares.take() == [0]


def test_a_local_backend_with_a_cluster_address_is_refused(
    make_spec: Callable[..., StudySpec],
) -> None:
    from tuner.errors import SpecError

    with pytest.raises(SpecError, match="backend 'local' runs on this machine only"):
        with_overrides(make_spec(execution={"backend": "local"}), ray_address="head:6379")
