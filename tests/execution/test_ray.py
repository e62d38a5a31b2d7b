"""`tuner.run()` on a real local Ray instance: workers as Ray tasks over one study."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import tuner
from tests.processes import descendants, process_name
from tests.specs import probe_spec
from tuner.runner import with_overrides
from tuner.spec import StudySpec
from tuner.storage.rdb import INTERRUPTED_KEY, open_storage

pytestmark = pytest.mark.workers


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


def test_a_worker_uses_the_cpus_it_holds_at_niceness_0(local_ray: None, sqlite_url: str) -> None:
    """One worker on this machine trains with a thread per CPU it may use (none left idle),
    and Ray's default niceness (15) is not applied to it."""
    import ray

    from tuner.execution.resources import usable_cpus

    ray.shutdown()  # the shared instance was started without tuner's settings
    spec = probe_spec(sqlite_url, 1, workers=1, backend="ray")
    try:
        tuner.run(spec)
    finally:
        ray.shutdown()
    (trial,) = optuna.load_study(study_name="probe", storage=sqlite_url).trials
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("fail_reason")
    (epoch,) = trial.user_attrs["curve"]
    assert epoch["torch_threads"] == usable_cpus()
    assert epoch["niceness"] == os.getpriority(os.PRIO_PROCESS, 0)  # the driver's own


QUICKSTART = Path(__file__).parents[2] / "studies" / "quickstart.toml"
#: Addresses only this machine reaches.
LOOPBACK = ("127.", "::1", "::ffff:127.")


def _listening(pids: list[int]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of each TCP socket the processes listen on, read from
    /proc: the socket inodes each holds, matched with /proc/net/tcp and tcp6."""
    owners = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue  # ended meanwhile
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue  # closed meanwhile: the process's other sockets are still read
            if target.startswith("socket:["):
                owners[target[8:-1]] = process_name(pid)
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            address, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in owners:  # 0A: LISTEN
                continue
            host, port = address.split(":")
            raw = bytes.fromhex(host)  # 32-bit words in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((owners[inode], socket.inet_ntop(family, raw), int(port, 16)))
    return found


def _start_run(tuner_process: Callable[..., subprocess.Popen], url: str) -> subprocess.Popen:
    """`tuner run` of the quickstart, trials long enough to be caught under way."""
    settings = ["budget.epochs=400", "pruner.name='none'", "execution.heartbeat_seconds=1"]
    settings.append("execution.backend='ray'")
    settings.append("execution.grace_seconds=3")
    arguments = [argument for setting in settings for argument in ("--set", setting)]
    driver = tuner_process("run", str(QUICKSTART), "--storage", url, *arguments)
    deadline = time.monotonic() + 180
    while not _running(url):
        assert driver.poll() is None, driver.stderr.read()
        assert time.monotonic() < deadline, "no trial started"
        time.sleep(0.5)
    return driver


def _running(url: str) -> list[optuna.trial.FrozenTrial]:
    try:
        trials = optuna.load_study(study_name="quickstart", storage=open_storage(url)).trials
    except KeyError:  # no study yet
        return []
    return [t for t in trials if t.state == TrialState.RUNNING and t.intermediate_values]


def test_a_local_run_listens_on_loopback_only_and_prints_no_token_notice(
    tuner_process: Callable[..., subprocess.Popen], tmp_path: Path
) -> None:
    driver = _start_run(tuner_process, f"sqlite:///{tmp_path / 'studies.db'}")
    listening = _listening(descendants(driver.pid))
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=120) == 130
    assert {"gcs_server", "raylet"} <= {name for name, _, _ in listening}, listening
    assert all(address.startswith(LOOPBACK) for _, address, _ in listening), listening
    assert "Token authentication" not in driver.stderr.read()


def test_ray_failing_under_a_run_ends_it_in_one_line_and_leaves_no_trial_running(
    tuner_process: Callable[..., subprocess.Popen], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    driver = _start_run(tuner_process, url)
    (raylet,) = [pid for pid in descendants(driver.pid) if process_name(pid) == "raylet"]
    os.kill(raylet, signal.SIGKILL)
    assert driver.wait(timeout=180) == 1
    lines = driver.stderr.read().strip().splitlines()
    assert lines[-1].startswith("tuner: error: Ray failed under the study"), lines
    assert not any("Traceback" in line for line in lines), lines
    trials = optuna.load_study(study_name="quickstart", storage=open_storage(url)).trials
    assert not [trial for trial in trials if trial.state == TrialState.RUNNING]
    assert any(INTERRUPTED_KEY in trial.system_attrs for trial in trials)


def _tuner_run(
    tmp_path: Path, backend: str = "ray", **environment: str
) -> subprocess.CompletedProcess:
    """`tuner run` of three quickstart trials on a SQLite file in tmp_path, on `backend`, in
    the environment given on top of this one's."""
    command = ["run", str(QUICKSTART), "--trials", "3", "--set", f"execution.backend='{backend}'"]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tuner.cli",
            *command,
            "--storage",
            f"sqlite:///{tmp_path}/studies.db",
        ],
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("backend", ["ray", "local"])
def test_a_ray_address_in_the_environment_does_not_reach_a_local_run(
    tmp_path: Path, backend: str
) -> None:
    """Ray reads RAY_ADDRESS as the cluster to join (here, nothing answers there); a local
    run joins only a cluster it is given, and says once that it ignored the variable."""
    run = _tuner_run(tmp_path, backend, RAY_ADDRESS="127.0.0.1:1")
    assert run.returncode == 0, run.stderr
    notes = [line for line in run.stdout.splitlines() if "RAY_ADDRESS" in line]
    assert notes == [
        "note: RAY_ADDRESS=127.0.0.1:1 is ignored: this run stays on this machine; to run on "
        "that cluster, pass --ray-address"
    ]
    study = optuna.load_study(study_name="quickstart", storage=f"sqlite:///{tmp_path}/studies.db")
    assert len(study.trials) == 3 and all(t.state.is_finished() for t in study.trials)


def test_a_ray_that_cannot_start_is_one_line_and_no_study(tmp_path: Path) -> None:
    """Ray's own start-up failure is a traceback; the user reads one line that says what to
    do, exit 1, after a second try. (Ray's temporary folder is a file here: Ray cannot start.)"""
    not_a_folder = tmp_path / "ray-tmp"
    not_a_folder.write_text("")
    run = _tuner_run(tmp_path, RAY_TMPDIR=str(not_a_folder))
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert lines == [
        f"tuner: error: Ray did not start on this machine in 2 tries (NotADirectoryError: "
        f"[Errno 20] Not a directory: '{not_a_folder / 'ray'}'): if the machine is busy, run "
        "again when it is quieter; check that Ray's temporary folder (RAY_TMPDIR, else /tmp) "
        "is writable and has space"
    ], lines
    database = tmp_path / "studies.db"
    assert not database.exists() or optuna.get_all_study_names(f"sqlite:///{database}") == []
