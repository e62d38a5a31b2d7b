"""The worker loop: claim a trial → sample its configuration → train → tell, until done.

One loop per worker process (a Ray task, or ``tuner worker`` under any scheduler); no
process per trial, so per-trial overhead stays near plain Optuna's. Optuna beats heartbeats
and sweeps stale trials only inside ``study.optimize()``; under ask/tell this loop does both.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import optuna
import torch
from optuna.trial import TrialState

from tuner import study as studies
from tuner.dashboard import upload_learning_curve
from tuner.space import sample_config
from tuner.spec import StudySpec
from tuner.storage import open_storage, rdb_backend
from tuner.train import TrainingRecord, TrialDiverged, pick_device, train, trial_seed

logger = logging.getLogger(__name__)

#: How often a worker with nothing to claim looks again while other trials still run.
IDLE_POLL_SECONDS = 0.5


@dataclass
class WorkerSummary:
    """What one worker did, returned to the launcher."""

    worker: str
    trials: int = 0


@contextmanager
def heartbeat(storage: optuna.storages.RDBStorage, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat every interval while the body runs (training blocks)."""
    interval = storage.get_heartbeat_interval()
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # a missed beat is retried next interval; the trial goes on
                logger.warning("heartbeat for trial %d failed", trial_id, exc_info=True)

    storage.record_heartbeat(trial_id)
    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_trial(
    study: optuna.Study, trial: optuna.Trial, spec: StudySpec, worker: dict[str, str]
) -> TrialState:
    """Train one claimed trial and tell the study how it ended; never leaves it RUNNING.

    `worker` (its name and node) is recorded with the sampled configuration, in one write.
    """
    device = pick_device()
    seed = trial_seed(spec.seed, trial.number)
    record = TrainingRecord()
    started = time.monotonic()
    state, value, reason = TrialState.FAIL, None, None
    try:
        config = sample_config(trial, spec)
        rdb_backend(trial.storage).set_trial_user_attrs(
            trial._trial_id, {**worker, "config": config.to_dict()}
        )
        value = train(trial, spec, config, seed, device, record)
        state = TrialState.COMPLETE
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    except TrialDiverged as error:
        reason = str(error)
    except Exception as error:
        reason = f"{type(error).__name__}: {error}"
        logger.error("trial %d failed:\n%s", trial.number, traceback.format_exc())
    except BaseException:  # Ctrl-C or the task being cancelled: end the trial, then stop
        reason = "interrupted: the worker was stopped"
        _finish(study, trial, record, started, seed, device, TrialState.FAIL, None, reason)
        raise
    if state is TrialState.COMPLETE and not math.isfinite(value):
        state, reason = TrialState.FAIL, f"non-finite value {value}"
    _finish(study, trial, record, started, seed, device, state, value, reason)
    return state


def _finish(
    study: optuna.Study,
    trial: optuna.Trial,
    record: TrainingRecord,
    started: float,
    seed: int,
    device: torch.device,
    state: TrialState,
    value: float | None,
    reason: str | None,
) -> None:
    """Record what Optuna has no column for, then tell the study."""
    attributes = {
        "seed": seed,
        "device": str(device),
        "epochs_run": record.epochs_run,
        "wall_seconds": round(time.monotonic() - started, 4),
        "curve": record.curve,
    }
    if reason:
        attributes["fail_reason"] = reason
    # Before tell: a finished trial takes no more attributes.
    upload_learning_curve(trial, state, record.curve, attributes["wall_seconds"])
    try:
        rdb_backend(trial.storage).set_trial_user_attrs(trial._trial_id, attributes)
        # A pruned trial keeps its last reported value, as in study.optimize().
        study.tell(trial, value if state is TrialState.COMPLETE else None, state=state)
    except optuna.exceptions.UpdateFinishedTrialError:
        # Another process failed it as stale (this worker missed its heartbeats); its retry
        # is already queued, so there is nothing left to record here.
        logger.warning("trial %d was finished by another process", trial.number)


def _others_running(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def run_worker(
    spec: StudySpec,
    storage_url: str,
    deadline: float | None = None,
    worker: str | None = None,
    threads: int | None = None,
    node: str | None = None,
) -> WorkerSummary:
    """Loop over trials of the spec's study until its budget or `deadline` (epoch seconds) ends.

    When no trial is left to claim but others are still running, the worker waits up to one
    grace period for them: if one's worker has died, its trial goes stale and its retry is
    claimed here instead of being left for nobody.

    Args:
        spec: the validated study spec (the study must already exist in storage).
        storage_url: the study database.
        deadline: stop claiming trials after this time.
        worker: a name recorded on each trial (host:pid by default).
        threads: torch CPU threads for this worker (its share of the cores).
        node: the machine recorded on each trial (the host name by default).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if threads:
        torch.set_num_threads(threads)
    summary = WorkerSummary(worker or f"{socket.gethostname()}:{os.getpid()}")
    execution = spec.execution
    storage = open_storage(
        storage_url, heartbeat=(execution.heartbeat_seconds, execution.grace_seconds)
    )
    study = studies.load(spec, storage)
    identity = {"worker": summary.worker, "node": node or socket.gethostname()}
    idle_since: float | None = None
    swept = 0.0
    while deadline is None or time.time() < deadline:
        if time.monotonic() - swept >= execution.heartbeat_seconds:  # staleness moves no faster
            optuna.storages.fail_stale_trials(study)
            swept = time.monotonic()
        trial = studies.claim_trial(study, spec)
        if trial is None:
            idle_since = idle_since or time.monotonic()
            waited = time.monotonic() - idle_since
            if (
                not _others_running(study)
                or waited > execution.grace_seconds + execution.heartbeat_seconds
            ):
                break
            time.sleep(IDLE_POLL_SECONDS)
            continue
        idle_since = None
        with heartbeat(storage, trial._trial_id):
            run_trial(study, trial, spec, identity)
        summary.trials += 1
    return summary
