"""A command run once per trial (``[workload] command``), and `current_trial()` inside it.

The worker starts the command in the study file's folder and hands it the trial through the
environment variable TUNER_TRIAL (the storage URL, study, trial id, seed, device and
configuration); the script calls `tuner.current_trial()` and gets the same `Trial` a
training function gets, whose `report` talks to the study database directly. The worker keeps
heartbeats going meanwhile; when the script exits it reads back what the script reported
(curve, pruned or diverged), keeps stdout and stderr as the trial's artifacts, and settles the
trial: a non-zero exit is a FAIL with the tail of stderr as its reason.

The command runs in its own process group: Ctrl-C or a cancelled worker ends the script and
every process it started. On Linux the worker's fork server starts it
(tuner.execution.script_server): a Python script is forked from an interpreter that has
imported torch and tuner already, so that a trial starts in milliseconds, and the server ends
the group when the worker dies, which a SIGKILLed worker cannot do. Elsewhere the command is
a subprocess of the worker.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import torch

from tuner.config import TrainingConfig
from tuner.execution.output import TAIL_LINES, keep_files
from tuner.execution.script_server import ForkServer, Launch, end_group, python_entry
from tuner.execution.train import TrainingRecord, TrialDiverged
from tuner.execution.trial import Trial, final_value
from tuner.spec import StudySpec, parse_spec
from tuner.storage import optuna_internals as internals
from tuner.storage.rdb import open_storage, rdb_backend

logger = logging.getLogger(__name__)

#: The environment variable through which a worker hands a script its trial.
TRIAL_VARIABLE = "TUNER_TRIAL"
#: The user attribute where a script's `report` leaves why it stopped (pruned or diverged).
STOP_ATTRIBUTE = "script_stop"


class ScriptFailed(Exception):
    """The command exited non-zero; the message has its status and the tail of its stderr."""


_current: Trial | None = None


def current_trial() -> Trial:
    """The trial this script was started for (by a worker of a ``[workload] command`` study).

    Raises:
        RuntimeError: the script was not started by a tuner worker.
    """
    global _current
    if _current is not None:
        return _current
    raw = os.environ.get(TRIAL_VARIABLE)
    if raw is None:
        raise RuntimeError(
            f"tuner.current_trial(): no trial handed over (${TRIAL_VARIABLE} is not set); run "
            "this script through a study file with [workload] command = [...] and `tuner run`"
        )
    handed = json.loads(raw)
    study, spec = _study(handed["storage"], handed["study"])
    record = TrainingRecord()
    _current = Trial(
        optuna.Trial(study, handed["trial_id"]),
        spec,
        TrainingConfig.from_dict(handed["config"]),
        handed["seed"],
        torch.device(handed["device"]),
        record,
        on_report=_publish,
    )
    torch.manual_seed(_current.seed)
    return _current


@functools.cache
def _study(storage_url: str, name: str) -> tuple[optuna.Study, StudySpec]:
    """The study a script's trial belongs to, with its spec, loaded once a process."""
    from tuner.search.pruners import make_pruner

    # No heartbeat here: the worker beats for it, and has checked the database's tables.
    storage = open_storage(storage_url, checked=True)
    study_id = storage.get_study_id_from_name(name)
    spec = parse_spec(storage.get_study_user_attrs(study_id)["spec"], f"study {name}")
    study = optuna.load_study(study_name=spec.name, storage=storage, pruner=make_pruner(spec))
    return study, spec


def prepare_fork(env: Mapping[str, str] | None = None) -> None:
    """What `current_trial` can do before it knows its trial, done once by the fork server
    (tuner.execution.script_server) rather than by every script it forks: the imports (torch's
    compiler among them, which every optimizer's constructor imports: 1 s), SQLAlchemy's
    configuration of Optuna's table mappers (0.1 s at their first use in a
    process), and once a trial's environment (`env`) has named them, the study's storage and
    spec, its connections closed then: a forked child opens its own, as SQLAlchemy requires."""
    import sqlalchemy.orm
    import torch._dynamo  # noqa: F401

    import tuner.search.pruners  # noqa: F401

    sqlalchemy.orm.configure_mappers()
    raw = (env or {}).get(TRIAL_VARIABLE)
    if raw is not None:
        handed = json.loads(raw)
        study, _ = _study(handed["storage"], handed["study"])
        rdb_backend(internals.study_storage(study)).engine.dispose()


def _publish(trial: Trial, stopped: BaseException | None) -> None:
    """After each report: leave the curve, and why the trial stopped, for the worker (in one
    transaction)."""
    attributes: dict[str, Any] = {
        "curve": trial.record.curve,
        "epochs_run": trial.record.epochs_run,
    }
    if stopped is not None:
        kind = "pruned" if isinstance(stopped, optuna.TrialPruned) else "diverged"
        attributes[STOP_ATTRIBUTE] = {"kind": kind, "reason": str(stopped)}
    storage = rdb_backend(trial.optuna_trial.storage)
    storage.set_trial_attrs(internals.trial_id(trial.optuna_trial), attributes)


@contextmanager
def script_loop(spec: StudySpec, storage_url: str) -> Iterator[Callable[[Trial], float]]:
    """`run_script` for one worker's trials: on Linux through a fork server of the worker's,
    started now (its imports overlap the worker's first claim) and stopped with the loop."""
    if not sys.platform.startswith("linux"):  # the server needs Linux's parent-death signal
        yield partial(run_script, spec, storage_url, None)
        return
    server = ForkServer(python=python_entry(interpreted(spec.workload.command or [])) is not None)
    try:
        yield partial(run_script, spec, storage_url, server)
    finally:
        server.close()


def run_script(spec: StudySpec, storage_url: str, server: ForkServer | None, trial: Trial) -> float:
    """Run the study's command for `trial` to its end, started by `server` (else as a
    subprocess), and return the trial's value.

    Raises:
        optuna.TrialPruned: the script's report was pruned.
        TrialDiverged: it reported a non-finite value.
        ScriptFailed: it exited non-zero.
        MetricNotReported: it exited 0 without reporting the study's metric.
    """
    command = list(spec.workload.command or [])
    folder = spec.workload.search_path[0] if spec.workload.search_path else None
    handed = {
        "storage": storage_url,
        "study": spec.name,
        "trial_id": internals.trial_id(trial.optuna_trial),
        "seed": trial.seed,
        "device": str(trial.device),
        "config": trial.config.to_dict(),
    }
    with tempfile.TemporaryDirectory(prefix="tuner-script-") as tmp:
        stdout_path = Path(tmp) / f"trial_{trial.number}_stdout.txt"
        stderr_path = Path(tmp) / f"trial_{trial.number}_stderr.txt"
        launch = Launch(
            argv=interpreted(command),
            cwd=folder,
            env={**os.environ, TRIAL_VARIABLE: json.dumps(handed)},
            stdout=str(stdout_path),
            stderr=str(stderr_path),
            threads=torch.get_num_threads(),
        )
        process = server.start(launch) if server is not None else _subprocess(launch)
        try:
            status = process.wait()
        finally:  # also after a clean exit: nothing the script started outlives its trial
            end_group(process.pid, process.wait)
        keep_files(trial.optuna_trial, [stdout_path, stderr_path])
        tail = stderr_path.read_text(errors="replace").splitlines()[-TAIL_LINES:]
    return _settle_script(trial, command, status, tail)


def interpreted(command: list[str]) -> list[str]:
    """The command, with a leading ``python`` meaning the interpreter tuner runs in: the one
    where `tuner.current_trial()` can be imported, whatever ``python`` is first on PATH."""
    return [sys.executable, *command[1:]] if command[:1] == ["python"] else list(command)


def _settle_script(trial: Trial, command: list[str], status: int, tail: list[str]) -> float:
    """What the script's exit and its reports in storage make of the trial."""
    frozen = trial.optuna_trial.storage.get_trial(internals.trial_id(trial.optuna_trial))
    if "config" in frozen.user_attrs:  # with the parameters the script suggested
        trial.config = TrainingConfig.from_dict(frozen.user_attrs["config"])
    trial.record.curve = list(frozen.user_attrs.get("curve", []))
    trial.record.epochs_run = int(frozen.user_attrs.get("epochs_run", 0))
    stop = frozen.user_attrs.get(STOP_ATTRIBUTE)
    if stop is not None:
        if stop["kind"] == "pruned":
            raise optuna.TrialPruned(stop["reason"])
        raise TrialDiverged(stop["reason"])
    if status != 0:
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        stderr = "\n".join(tail) or "(no output on stderr)"
        raise ScriptFailed(f"{shlex.join(command)} {how}; stderr ends:\n{stderr}")
    if frozen.intermediate_values:
        trial.value = frozen.intermediate_values[max(frozen.intermediate_values)]
    return final_value(trial, None, shlex.join(command))


def _subprocess(launch: Launch) -> subprocess.Popen:
    """The command as a subprocess of the worker, in a session of its own."""
    with open(launch.stdout, "wb") as stdout, open(launch.stderr, "wb") as stderr:
        return subprocess.Popen(
            launch.argv,
            cwd=launch.cwd,
            env=launch.env,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
