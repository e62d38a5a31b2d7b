"""Faults a study survives, each shown against real processes, databases and Ray nodes."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from tests.conftest import PrivatePostgres
from tests.processes import alive, wait_while_progressing, worker_processes
from tests.specs import build_spec
from tuner.spec import StudySpec
from tuner.storage.rdb import INTERRUPTED_KEY, open_storage
from tuner.study import lifecycle as studies

ROOT = Path(__file__).parent.parent
QUICKSTART = ROOT / "studies" / "quickstart.toml"
FAST_HEARTBEAT = {"heartbeat_seconds": 1, "grace_seconds": 3}


#: Epochs of a trial a test stops on purpose: about 4 s, so that one seen early in its epochs
#: (`running_by`'s `before_epoch`) is still training when the signal lands, however slow the
#: machine: a 1-second trial could finish between the check and the signal, and did in CI.
STOPPED_EPOCHS = 80


def slow_spec(name: str, trials: int, epochs: int = 20, **execution: Any) -> StudySpec:
    """Rosenbrock trials of about 50 ms an epoch, with pruning off so none ends early."""
    return build_spec(
        name=name,
        workload={"name": "rosenbrock", "options": {"steps_per_epoch": 200}},
        search={"optimizers": ["adam", "momentum"], "weight_decay": "off"},
        optimizers={"momentum": {"learning_rate": [1e-5, 1e-3]}},
        budget={"trials": trials, "epochs": epochs},
        pruner={"name": "none"},
        execution={**FAST_HEARTBEAT, **execution},
    )


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    limit = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > limit:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def trials_of(name: str, url: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)


def assert_finished_with_retries(trials: list[FrozenTrial], budget: int) -> list[FrozenTrial]:
    """All finished; the budget spent exactly, plus one retry per trial lost to a dead worker."""
    assert all(trial.state.is_finished() for trial in trials), [t.state for t in trials]
    retries = [trial for trial in trials if "failed_trial" in trial.system_attrs]
    assert len(trials) == budget + len(retries)
    assert sorted(trial.number for trial in trials) == list(range(len(trials)))
    by_number = {trial.number: trial for trial in trials}
    for retry in retries:
        original = by_number[retry.system_attrs["failed_trial"]]
        assert original.state == TrialState.FAIL
        # Every parameter the original had sampled before it died is kept; one killed while
        # sampling gets the rest sampled anew.
        assert original.params.items() <= retry.params.items()
    return retries


def test_sigkilled_worker_trial_fails_and_is_retried_with_the_same_parameters(
    tuner_process: Callable[..., subprocess.Popen], storage_url: str, study_name: str
) -> None:
    spec = slow_spec(study_name, trials=2, epochs=STOPPED_EPOCHS)
    studies.create_or_resume(spec, open_storage(storage_url))
    victim = tuner_process("worker", study_name, "--storage", storage_url, "--name", "victim")
    wait_for(
        lambda: running_by(study_name, storage_url, "victim", before_epoch=STOPPED_EPOCHS // 2),
        60,
        "the victim to be early in a trial",
    )
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    (killed,) = [t for t in trials_of(study_name, storage_url) if t.state == TrialState.RUNNING]

    rescuer = tuner_process("worker", study_name, "--storage", storage_url, "--name", "rescuer")
    assert rescuer.wait(timeout=120) == 0, rescuer.stderr.read()
    trials = trials_of(study_name, storage_url)
    (retry,) = assert_finished_with_retries(trials, budget=2)
    assert retry.system_attrs["failed_trial"] == killed.number
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["worker"] == "rescuer"
    (failed,) = [t for t in trials if t.number == killed.number]
    assert failed.user_attrs["fail_reason"].startswith("no heartbeat for")
    assert "fail_reason" not in retry.user_attrs


def assert_rerun_in_the_budget(trials: list[FrozenTrial], budget: int) -> None:
    """Every interrupted trial was re-run with its parameters, and the budget trained exactly."""
    interrupted = [t for t in trials if INTERRUPTED_KEY in t.system_attrs]
    assert interrupted and all(t.state == TrialState.FAIL for t in interrupted)
    reruns = {
        t.system_attrs["tuner:rerun_of"]: t for t in trials if "tuner:rerun_of" in t.system_attrs
    }
    for trial in interrupted:
        assert trial.params.items() <= reruns[trial.number].params.items()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == budget
    assert len(trials) == budget + len(interrupted)


def test_ctrl_c_interrupts_the_running_trial_and_a_resume_reruns_it_in_the_budget(
    tuner_process: Callable[..., subprocess.Popen], sqlite_url: str
) -> None:
    spec = slow_spec("interrupted", trials=2, epochs=STOPPED_EPOCHS)
    studies.create_or_resume(spec, open_storage(sqlite_url))
    worker = tuner_process("worker", "interrupted", "--storage", sqlite_url)
    wait_for(
        lambda: running_by("interrupted", sqlite_url, before_epoch=STOPPED_EPOCHS // 2),
        60,
        "the worker to be early in a trial",
    )
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=60) == 130
    assert "re-run" in worker.stderr.read()
    trial, rerun = trials_of("interrupted", sqlite_url)[-2:]
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == "interrupted: the worker was stopped"
    assert rerun.state == TrialState.WAITING and rerun.params == trial.params

    resumed = tuner_process("worker", "interrupted", "--storage", sqlite_url)
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()
    assert_rerun_in_the_budget(trials_of("interrupted", sqlite_url), budget=2)


@pytest.mark.workers
@pytest.mark.parametrize("backend", ["ray", "local"])
def test_killed_driver_stops_its_workers_and_a_new_run_finishes_the_budget(
    tuner_process: Callable[..., subprocess.Popen], tmp_path: Path, backend: str
) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    args = [
        "run",
        str(QUICKSTART),
        "--storage",
        url,
        "--trials",
        "30",
        "--set",
        "budget.epochs=40",
        "--set",
        "pruner.name='none'",
        "--set",
        "execution.heartbeat_seconds=1",
        "--set",
        "execution.grace_seconds=3",
        "--set",
        f"execution.backend='{backend}'",
    ]
    driver = tuner_process(*args)

    def some_complete() -> bool:
        try:
            return any(t.state == TrialState.COMPLETE for t in trials_of("quickstart", url))
        except KeyError:
            return False

    wait_for(
        lambda: some_complete() and len(worker_processes(driver.pid)) == 2,
        120,
        "the first trial to complete, both workers training",
    )
    workers = worker_processes(driver.pid)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    # Ray ends the workers of a dead driver some seconds later (2 s on a busy 2-core machine,
    # more on a slower one): a fixed wait could end before they did, and see them go on.
    wait_for(lambda: not any(alive(pid) for pid in workers), 30, "the workers to end")
    finished = sum(t.state.is_finished() for t in trials_of("quickstart", url))
    time.sleep(3)
    assert sum(t.state.is_finished() for t in trials_of("quickstart", url)) == finished, (
        "workers went on after their driver was killed"
    )
    assert finished < 30

    resumed = tuner_process(*args)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert_finished_with_retries(trials_of("quickstart", url), budget=30)


@pytest.mark.postgres
@pytest.mark.slow
def test_sixteen_workers_spend_a_thousand_trial_budget_exactly(
    tuner_process: Callable[..., subprocess.Popen], postgres_url: str
) -> None:
    name = f"test-{uuid.uuid4().hex[:10]}"
    spec = build_spec(
        name=name,
        workload={"name": "rosenbrock", "options": {"steps_per_epoch": 1}},
        search={"optimizers": ["sgd", "adam"], "weight_decay": "off"},
        budget={"trials": 1000, "epochs": 1},
        sampler={"name": "random"},
        pruner={"name": "none"},
    )
    studies.create_or_resume(spec, open_storage(postgres_url))
    try:
        workers = [
            tuner_process(
                "worker", name, "--storage", postgres_url, "--name", f"w{i}", "--threads", "1"
            )
            for i in range(16)
        ]
        for worker in workers:
            assert worker.wait(timeout=600) == 0, worker.stderr.read()
        trials = trials_of(name, postgres_url)
        assert sorted(trial.number for trial in trials) == list(range(1000))
        assert {trial.state for trial in trials} == {TrialState.COMPLETE}
        assert len({trial.user_attrs["worker"] for trial in trials}) > 1
    finally:
        optuna.delete_study(study_name=name, storage=open_storage(postgres_url))


@pytest.mark.postgres
@pytest.mark.slow
def test_workers_ride_out_a_postgres_restart(
    tuner_process: Callable[..., subprocess.Popen], private_postgres: PrivatePostgres
) -> None:
    """A server of the test's own, stopped and started: the shared one keeps serving others."""
    url, name = private_postgres.url, f"test-{uuid.uuid4().hex[:10]}"
    spec = slow_spec(name, trials=24, epochs=4, heartbeat_seconds=2, grace_seconds=30)
    studies.create_or_resume(spec, open_storage(url))
    workers = [tuner_process("worker", name, "--storage", url) for _ in range(2)]
    wait_for(
        lambda: sum(t.state.is_finished() for t in trials_of(name, url)) >= 4,
        120,
        "some trials to finish",
    )
    private_postgres.stop()
    private_postgres.start()
    wait_while_progressing(workers, lambda: [t.state for t in trials_of(name, url)])
    for worker in workers:
        assert worker.returncode == 0, worker.stderr.read()
    trials = trials_of(name, url)
    assert sorted(trial.number for trial in trials) == list(range(24))
    assert {trial.state for trial in trials} == {TrialState.COMPLETE}


@pytest.mark.workers
@pytest.mark.postgres
@pytest.mark.slow
def test_losing_a_ray_node_fails_its_trial_and_the_study_finishes(postgres_url: str) -> None:
    from tuner.runner import with_overrides

    with two_node_cluster(postgres_url) as (cluster, doomed, name):
        spec = with_overrides(
            slow_spec(name, trials=8, workers=2, gpus_per_trial=0.0),
            storage=postgres_url,
            ray_address=cluster.address,
        )
        driver, errors = run_in_thread(spec)

        def both_nodes_busy() -> bool:
            try:
                running = [
                    t for t in trials_of(name, postgres_url) if t.state == TrialState.RUNNING
                ]
            except KeyError:
                return False
            return len({t.user_attrs.get("node") for t in running if t.intermediate_values}) == 2

        wait_for(both_nodes_busy, 120, "a trial running on each node")
        cluster.remove_node(doomed)
        driver.join(timeout=300)
        assert not driver.is_alive() and not errors, errors
        retries = assert_finished_with_retries(trials_of(name, postgres_url), budget=8)
        assert len(retries) == 1


def test_an_outage_longer_than_grace_inside_the_retry_window_fails_no_trial(
    tuner_process: Callable[..., subprocess.Popen], private_postgres: PrivatePostgres
) -> None:
    """Time the database was unreachable is nobody's silence: two workers in the middle of
    their trials when PostgreSQL stops for three times grace finish them, none failed."""
    url = private_postgres.url
    spec = slow_spec("outage", trials=4, epochs=STOPPED_EPOCHS, reconnect_seconds=60)
    studies.create_or_resume(spec, open_storage(url))
    workers = [tuner_process("worker", "outage", "--storage", url) for _ in range(2)]
    wait_for(
        lambda: len(running_by("outage", url, before_epoch=STOPPED_EPOCHS // 2)) == 2,
        120,
        "two trials early in their epochs",
    )
    private_postgres.stop()
    time.sleep(3 * FAST_HEARTBEAT["grace_seconds"])
    private_postgres.start()
    for worker in workers:
        assert worker.wait(timeout=180) == 0, worker.stderr.read()
    trials = trials_of("outage", url)
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 4


@pytest.mark.workers
def test_an_outage_past_the_retry_window_ends_the_run_in_one_line_and_status_resolves_it(
    tuner_process: Callable[..., subprocess.Popen],
    private_postgres: PrivatePostgres,
    tmp_path: Path,
) -> None:
    url, window = private_postgres.url, 5
    study_file = tmp_path / "outage.toml"
    study_file.write_text(
        'name = "outage"\n'
        '[workload]\nname = "rosenbrock"\noptions = { steps_per_epoch = 200 }\n'
        '[search]\noptimizers = ["adam"]\nweight_decay = "off"\n'
        "[budget]\ntrials = 4\nepochs = 400\n"
        '[pruner]\nname = "none"\n'
        "[execution]\nheartbeat_seconds = 1\ngrace_seconds = 3\n"
        f"reconnect_seconds = {window}\n"
    )
    driver = tuner_process("run", str(study_file), "--storage", url)

    def under_way() -> bool:
        try:
            return bool(running_by("outage", url))
        except KeyError:  # no study yet
            return False

    wait_for(under_way, 120, "a trial under way")
    private_postgres.stop()
    stopped = time.monotonic()
    assert driver.wait(timeout=120) == 1
    lines = driver.stderr.read().strip().splitlines()
    assert not any("Traceback" in line for line in lines), lines
    assert lines[-1].startswith("tuner: error: the study database"), lines
    assert "has been unreachable since" in lines[-1]
    assert sum("tuner: error" in line for line in lines) == 1
    # The database comes back once no worker can be alive behind the trials it left RUNNING
    # (silent for longer than the window and two heartbeats): the next command resolves them.
    time.sleep(max(0.0, stopped + window + 2 * 1 + 2 - time.monotonic()))
    private_postgres.start()
    status = tuner_process("status", "outage", "--storage", url)
    assert status.wait(timeout=120) == 0, status.stderr.read()
    trials = trials_of("outage", url)
    assert not [trial for trial in trials if trial.state == TrialState.RUNNING]
    stopped_trials = [trial for trial in trials if trial.state == TrialState.FAIL]
    assert stopped_trials
    assert all(trial.user_attrs.get("fail_reason") for trial in stopped_trials)


#: Epochs of a stacked trial (stacked_spec): those stopped on purpose are stopped in the first
#: half, as STOPPED_EPOCHS's are.
STACKED_EPOCHS = 12


def stacked_spec(name: str, trials: int) -> StudySpec:
    """Regression trials of several seconds each that stack (Adam), pruning off."""
    return build_spec(
        name=name,
        workload={"name": "mlp_regression", "options": {"samples": 5_000}},
        search={"optimizers": ["adam"], "weight_decay": "off", "batch_sizes": [32]},
        budget={"trials": trials, "epochs": STACKED_EPOCHS},
        pruner={"name": "none"},
        execution={**FAST_HEARTBEAT, "trials_per_worker": 3},
    )


def running_by(
    name: str, url: str, worker: str | None = None, before_epoch: int | None = None
) -> list[FrozenTrial]:
    """The trials under way (RUNNING, an epoch reported), of `worker` if given; with
    `before_epoch`, only those that have reported at most that many epochs."""
    return [
        trial
        for trial in trials_of(name, url)
        if trial.state == TrialState.RUNNING
        and trial.intermediate_values
        and worker in (None, trial.user_attrs.get("worker"))
        and (before_epoch is None or len(trial.intermediate_values) <= before_epoch)
    ]


@pytest.mark.slow  # the rescuer trains three 12-epoch regressions to the end
def test_a_sigkilled_batched_worker_has_all_its_trials_retried(
    tuner_process: Callable[..., subprocess.Popen], sqlite_url: str
) -> None:
    studies.create_or_resume(stacked_spec("stacked-kill", trials=3), open_storage(sqlite_url))
    victim = tuner_process("worker", "stacked-kill", "--storage", sqlite_url, "--name", "victim")
    early = STACKED_EPOCHS // 2
    wait_for(
        lambda: len(running_by("stacked-kill", sqlite_url, "victim", before_epoch=early)) == 3,
        120,
        "the victim to be early in three trials at once",
    )
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    rescuer = tuner_process(
        "worker", "stacked-kill", "--storage", sqlite_url, "--name", "rescuer", "--batch", "3"
    )
    assert rescuer.wait(timeout=300) == 0, rescuer.stderr.read()
    retries = assert_finished_with_retries(trials_of("stacked-kill", sqlite_url), budget=3)
    assert len(retries) == 3
    assert all(
        t.state == TrialState.COMPLETE and t.user_attrs["worker"] == "rescuer" for t in retries
    )


def test_ctrl_c_interrupts_every_stacked_trial(
    tuner_process: Callable[..., subprocess.Popen], sqlite_url: str
) -> None:
    studies.create_or_resume(stacked_spec("stacked-stop", trials=3), open_storage(sqlite_url))
    worker = tuner_process("worker", "stacked-stop", "--storage", sqlite_url)
    wait_for(
        lambda: len(running_by("stacked-stop", sqlite_url, before_epoch=STACKED_EPOCHS // 2)) == 3,
        120,
        "the worker to be early in three trials at once",
    )
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=60) == 130
    trials = trials_of("stacked-stop", sqlite_url)
    assert [trial.state for trial in trials] == [TrialState.FAIL] * 3 + [TrialState.WAITING] * 3
    reasons = {t.user_attrs.get("fail_reason") for t in trials[:3]}
    assert reasons == {"interrupted: the worker was stopped"}


def run_in_thread(spec: StudySpec) -> tuple[threading.Thread, list[BaseException]]:
    """`tuner.run(spec)` on a started thread (a driver attached to the test's own Ray
    cluster), and the list that receives what it raised."""
    import tuner

    errors: list[BaseException] = []

    def drive() -> None:
        try:
            tuner.run(spec)
        except BaseException as error:
            errors.append(error)

    driver = threading.Thread(target=drive)
    driver.start()
    return driver, errors


@contextmanager
def two_node_cluster(postgres_url: str) -> Iterator[tuple[Any, Any, str]]:
    """A real Ray cluster of two one-CPU nodes on this machine, this process its driver: the
    cluster, the node a test may remove, and a study name, deleted afterwards."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    doomed = cluster.add_node(num_cpus=1)
    name = f"test-{uuid.uuid4().hex[:10]}"
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, doomed, name
    finally:
        ray.shutdown()
        cluster.shutdown()
        if name in optuna.get_all_study_names(open_storage(postgres_url)):
            optuna.delete_study(study_name=name, storage=open_storage(postgres_url))
