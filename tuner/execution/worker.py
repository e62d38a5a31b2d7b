"""The worker loop: claim trials, sample their configurations, train them, tell the study.

One loop per worker process (a Ray task, or ``tuner worker`` under any scheduler); no
process per trial, so per-trial overhead stays near plain Optuna's. A worker trains up to
``trials_per_worker`` trials at once: trials whose optimizer has a vectorized rule share a
stack (tuner.execution.stacked: one vmapped step for all), the others train alone, stepped in turn.
As soon as a trial ends its place goes to a newly claimed one. Whichever way a trial ran, it is
judged, reported, pruned and told on its own (tuner.execution.train.close_epoch).

Optuna beats heartbeats and sweeps stale trials only inside ``study.optimize()``; under
ask/tell this loop does both. A worker whose database stays unreachable for the retry window
stops: its trials are interrupted where it can still mark them (re-run on resume), and the
next process to open the study resolves those it cannot (tuner.storage.rdb.RetryingRDBStorage).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, Protocol

import optuna
import torch
from optuna.study import StudyDirection
from optuna.trial import TrialState

from tuner.config import TrainingConfig
from tuner.errors import StorageUnreachableError
from tuner.execution.checkpointing import TrialCheckpoints
from tuner.execution.stacked import StackedTrials, can_stack, stack_key
from tuner.execution.train import (
    EpochResult,
    TrainingRecord,
    TrialDiverged,
    TrialTraining,
    close_epoch,
    pick_device,
    trial_seed,
)
from tuner.execution.trial import Trial, run_function
from tuner.search.space import sample_config
from tuner.search.vectorized_optimizers import vectorized_settings
from tuner.spec import StudySpec
from tuner.storage import optuna_internals as internals
from tuner.storage.artifacts import LearningCurveRecorder, TrialRecorder
from tuner.storage.checkpoints import one_line
from tuner.storage.rdb import open_storage, rdb_backend
from tuner.study import lifecycle as studies
from tuner.study.results import DIVERGED_ATTR
from tuner.workloads import TrialContext, build_trainable, training_function

logger = logging.getLogger(__name__)

#: How often a worker with nothing to claim looks again while other trials still run.
IDLE_POLL_SECONDS = 0.5
#: Trials per worker that ``trials_per_worker = "auto"`` gives on a GPU: ANCHORS measured
#: 64 stacked trials within 3% of 128 on an H100. On a CPU the cores are busy with one trial.
AUTO_TRIALS_PER_GPU_WORKER = 64


def trials_per_worker(setting: int | Literal["auto"], device: torch.device) -> int:
    """How many trials one worker trains at once on `device`."""
    if setting != "auto":
        return setting
    return AUTO_TRIALS_PER_GPU_WORKER if device.type == "cuda" else 1


@dataclass
class WorkerSummary:
    """What one worker did, returned to the launcher."""

    worker: str
    trials: int = 0


@dataclass
class _Beats:
    """What the heartbeat thread tells the loop: the database it gave up on, if it did."""

    lost: StorageUnreachableError | None = None

    def check(self) -> None:
        """Raise the heartbeat's StorageUnreachableError: the worker must stop."""
        if self.lost is not None:
            raise self.lost


@contextmanager
def heartbeat(
    storage: optuna.storages.RDBStorage, trial_ids: Callable[[], Iterable[int]]
) -> Iterator[_Beats]:
    """Record a heartbeat for each trial named by `trial_ids()` every interval while the body
    runs (training blocks the loop); once the database has been unreachable for the retry
    window, stop beating and say so (the loop checks between steps)."""
    beats = _Beats()
    interval = storage.get_heartbeat_interval()
    if interval is None:
        yield beats
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                for trial_id in trial_ids():
                    storage.record_heartbeat(trial_id)
            except StorageUnreachableError as error:
                beats.lost = error
                return
            except Exception:  # a missed beat is retried next interval; the trials go on
                logger.warning("heartbeat failed", exc_info=True)

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield beats
    finally:
        stop.set()
        thread.join()


@dataclass
class _Slot:
    """One claimed trial while this worker trains it."""

    trial: optuna.Trial
    seed: int
    started: float = field(default_factory=time.monotonic)
    config: TrainingConfig | None = None
    record: TrainingRecord = field(default_factory=TrainingRecord)
    epochs: int = 0
    #: Seconds spent building, training and evaluating it: its wall time less sampling, the
    #: database and waiting (a stack's step is shared out among its trials). What its
    #: learning curve's picture is weighed against (tuner.storage.artifacts).
    training_seconds: float = 0.0

    @contextmanager
    def training(self, share: int = 1) -> Iterator[None]:
        """Count the block's time as this trial's training (a `share`-th of it)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.training_seconds += (time.perf_counter() - started) / share

    checkpoints: TrialCheckpoints | None = None


#: Trains one trial with the user's own loop (a training function or a command) to its end.
UserLoop = Callable[[Trial], float]


@contextmanager
def user_loop(spec: StudySpec, storage_url: str) -> Iterator[UserLoop | None]:
    """How this study's trials train when user code owns the loop, else None; for as long
    as the worker runs (a command's loop keeps a process that starts its trials)."""
    if spec.workload.command:
        from tuner.execution.script import script_loop

        with script_loop(spec, storage_url) as loop:
            yield loop
        return
    function = training_function(spec.workload)
    yield None if function is None else partial(run_function, function)


class _Group(Protocol):
    """Trials stepped together: a `StackedTrials`, or one trial alone (`_Alone`)."""

    keys: list[Hashable]

    def step(self) -> list[Hashable]: ...
    def end_epoch(self, key: Hashable) -> EpochResult: ...
    def remove(self, keys: list[Hashable]) -> None: ...
    def state_dict(self, key: Hashable) -> dict[str, Any]: ...
    def load_state_dict(self, key: Hashable, state: dict[str, Any]) -> None: ...


class _Alone:
    """One trial trained by its library optimizer (no vectorized rule reproduces it, or the
    worker trains one trial at a time), stepped in turn with the stacks."""

    def __init__(self, key: int, training: TrialTraining):
        self.keys, self.training = [key], training

    def step(self) -> list[int]:
        return list(self.keys) if self.training.step() else []

    def end_epoch(self, key: int) -> EpochResult:
        return self.training.end_epoch()

    def remove(self, keys: list[int]) -> None:
        self.keys = [key for key in self.keys if key not in keys]

    def state_dict(self, key: int) -> dict[str, Any]:
        return self.training.state_dict()

    def load_state_dict(self, key: int, state: dict[str, Any]) -> None:
        self.training.load_state_dict(state)


def settle(run: Callable[[], float]) -> tuple[TrialState, float | None, str | None]:
    """Run the part of a trial that may end it and say how it went: COMPLETE with the value,
    PRUNED, PRUNED with the reason it diverged (see `_finish`), or FAIL with the reason.
    Ctrl-C, cancellation and a database gone for good propagate: they stop the worker,
    through no fault of the trial."""
    try:
        return TrialState.COMPLETE, run(), None
    except optuna.TrialPruned:
        return TrialState.PRUNED, None, None
    except TrialDiverged as error:
        return TrialState.PRUNED, None, str(error)
    except StorageUnreachableError:
        raise
    except Exception as error:
        logger.error("trial failed:\n%s", traceback.format_exc())
        # Notes say more of the failure: a training function's last printed lines.
        notes = "".join(f"\n{note}" for note in getattr(error, "__notes__", ()))
        return TrialState.FAIL, None, f"{type(error).__name__}: {error}{notes}"


class _Running:
    """The trials a worker is training, by trial number, in their groups."""

    def __init__(
        self,
        study: optuna.Study,
        spec: StudySpec,
        device: torch.device,
        capacity: int,
        recorder: TrialRecorder,
        user_loop: UserLoop | None = None,
    ):
        self.study, self.spec, self.device = study, spec, device
        self.recorder, self.user_loop = recorder, user_loop
        self.capacity = capacity
        self.slots: dict[int, _Slot] = {}
        self.groups: dict[Hashable, _Group] = {}
        self.finished = 0
        self._stackable: bool | None = None

    def __len__(self) -> int:
        return len(self.slots)

    def trial_ids(self) -> list[int]:
        return [internals.trial_id(slot.trial) for slot in list(self.slots.values())]

    def start(self, trial: optuna.Trial) -> None:
        """Sample a claimed trial's configuration, record it, and give the trial a place."""
        checkpoints = TrialCheckpoints(trial, self.spec)
        # A re-run keeps its line's seed stream: resumed, it continues where the first stopped.
        # Its first heartbeat and the worker's name came with the claim; its configuration is
        # recorded with its other attributes when it ends (tuner.execution.worker._finish).
        slot = _Slot(trial, trial_seed(self.spec.seed, checkpoints.file.origin))
        slot.checkpoints = checkpoints
        self.slots[trial.number] = slot

        def place() -> float:
            slot.config = sample_config(trial, self.spec)
            if self.user_loop is None:
                with slot.training():
                    self._place(trial.number, slot)
            return 0.0

        state, _, reason = settle(place)
        if state is not TrialState.COMPLETE:
            self._end(trial.number, state, None, reason)
        elif self.user_loop is not None:
            # The user's code owns its loop: the trial trains to its end here, heartbeats on.
            handle = Trial(
                trial,
                self.spec,
                slot.config,
                slot.seed,
                self.device,
                slot.record,
                checkpoints=checkpoints,
            )
            with slot.training():  # the user's loop, its reports included
                state, value, reason = settle(partial(self.user_loop, handle))
            slot.config = handle.config  # with the parameters the user's code suggested
            self._end(trial.number, state, value, reason)

    def step(self) -> None:
        """One optimizer step of every trial; trials whose epoch ended are judged, and those
        that are done (finished, pruned, failed) are told and leave their group."""
        for key, group in list(self.groups.items()):
            state, ended, reason = TrialState.COMPLETE, [], None
            try:
                with ExitStack() as timing:  # the step's time, shared by the group's trials
                    for number in group.keys:
                        timing.enter_context(self.slots[number].training(len(group.keys)))
                    ended = group.step()
            except StorageUnreachableError:
                raise
            except Exception as error:  # the group's shared step failed: so did its trials
                logger.error("training step failed:\n%s", traceback.format_exc())
                state, reason = TrialState.FAIL, f"{type(error).__name__}: {error}"
            if state is TrialState.FAIL:
                done = list(group.keys)
                for number in done:
                    self._end(number, state, None, reason)
            else:
                done = [number for number in ended if self._close_epoch(group, number)]
            if done:
                group.remove(done)
            if not group.keys:
                del self.groups[key]

    def stop_all(self, reason: str, interrupted: bool) -> None:
        """End every trial still training (the worker is stopping): `interrupted`, for no
        fault of the trials, each is re-run when the study resumes
        (tuner.study.lifecycle.interrupt); otherwise it is told FAIL. One that cannot be marked now
        is left to go stale and be retried."""
        for number, slot in list(self.slots.items()):
            try:
                if slot.checkpoints is not None:
                    slot.checkpoints.file.wait()  # its re-run resumes from the last one
                if interrupted:
                    studies.interrupt(self.study, internals.trial_id(slot.trial), reason)
                    del self.slots[number]
                else:
                    self._end(number, TrialState.FAIL, None, reason)
            except Exception as error:
                logger.warning("could not record trial %d as stopped: %s", number, error)
        self.groups.clear()

    def _stacking(self) -> bool:
        """Whether trials can be stacked: more than one per worker, and a workload that
        stacks (checked once, on a trainable built for the purpose)."""
        if self.capacity == 1:
            return False
        if self._stackable is None:
            context = TrialContext(seed=self.spec.seed, device=self.device, batch_size=1)
            self._stackable = can_stack(build_trainable(self.spec.workload, context))
        return self._stackable

    def _place(self, number: int, slot: _Slot, resume: bool = True) -> None:
        """Give the trial a place in a group; a re-run resumes from its line's checkpoint
        (one its training cannot load is named and the trial starts afresh)."""
        config = slot.config
        settings = vectorized_settings(config) if self._stacking() else None
        if settings is None:
            training = TrialTraining(self.spec, config, slot.seed, self.device)
            key: Hashable = ("alone", number)
            self.groups[key] = group = _Alone(number, training)
        else:
            key = stack_key(config, settings)
            group = self.groups.get(key) or StackedTrials(
                self.spec, settings, config.batch_size, self.device
            )
            group.add(number, config, slot.seed, settings)
            self.groups[key] = group  # registered once it holds the trial
        checkpoint = slot.checkpoints.load() if resume else None
        if checkpoint is None:
            return
        try:
            group.load_state_dict(number, checkpoint.state)
        except Exception as error:  # written by other code: its state does not fit
            logger.warning(
                "checkpoint %s not resumed from: %s; starting at epoch 1",
                slot.checkpoints.file.path,
                one_line(error),
            )
            group.remove([number])
            if not group.keys:
                del self.groups[key]
            self._place(number, slot, resume=False)
            return
        slot.checkpoints.resumed(checkpoint, slot.record)
        slot.epochs = checkpoint.epoch

    def _close_epoch(self, group: _Group, number: int) -> bool:
        """Judge one trial's finished epoch; True when the trial has ended."""
        slot = self.slots[number]
        slot.epochs += 1

        def judge() -> float:
            with slot.training():
                result = group.end_epoch(number)
            return close_epoch(slot.trial, self.spec, slot.record, slot.epochs, result)

        state, value, reason = settle(judge)
        if state is TrialState.COMPLETE and slot.checkpoints.due(slot.epochs):
            slot.checkpoints.save(
                slot.epochs, group.state_dict(number), slot.record, background=True
            )
        if state is TrialState.COMPLETE and slot.epochs < self.spec.budget.epochs:
            return False
        self._end(number, state, value, reason)
        return True

    def _end(self, number: int, state: TrialState, value: float | None, reason: str | None):
        # Told before it leaves `slots`: if the storage fails here, the trial keeps its
        # heartbeat and `stop_all` still ends it.
        _finish(self.study, self.slots[number], self.device, self.recorder, state, value, reason)
        del self.slots[number]
        self.finished += 1


def _title(slot: _Slot) -> str:
    """A trial's name in its learning curve's title: its optimizer and learning rate as it
    trained with them (the stored parameters may be positions in a range, not the rate)."""
    title = f"trial {slot.trial.number}"
    if slot.config is not None:
        title += f": {slot.config.optimizer}, lr {slot.config.learning_rate:.3g}"
    return title


def _finish(
    study: optuna.Study,
    slot: _Slot,
    device: torch.device,
    recorder: TrialRecorder,
    state: TrialState,
    value: float | None,
    reason: str | None,
) -> None:
    """Record what Optuna has no column for, then tell the study: the attributes (the
    configuration, the constraint and the learning curve's artifact among them) in one
    transaction, so that a trial costs no more commits than under Optuna's study.optimize."""
    trial, record = slot.trial, slot.record
    attributes = {
        "seed": slot.seed,
        "device": str(device),
        "epochs_run": record.epochs_run,
        "wall_seconds": round(time.monotonic() - slot.started, 4),
        "curve": record.curve,
    }
    if slot.config is not None:
        attributes["config"] = slot.config.to_dict()
    if reason and state is TrialState.PRUNED:
        # A diverged trial is information for the sampler, not a crash: Optuna's samplers
        # skip FAIL trials, so TPE kept proposing the region that diverges, and GP and CMA-ES
        # learn from COMPLETE trials only (told as PRUNED, GP proposed one diverging
        # configuration for the rest of a budget). So it is told COMPLETE with the worst
        # value there is (+inf when minimising, -inf when maximising) and marked infeasible
        # with Optuna's per-trial constraint: TPE ranks infeasible trials below every feasible
        # one, GP models the constraint and clips the infinite value to the worst finite one,
        # CMA-ES ranks it last. Optuna's best_trial and importances, and tuner's results
        # (tuner.study.results.completed), skip it by its constraint, its infinite value and the
        # "diverged" attribute that users see it by.
        state = TrialState.COMPLETE
        value = math.inf if study.direction == StudyDirection.MINIMIZE else -math.inf
        attributes[DIVERGED_ATTR] = reason
    elif reason:
        attributes["fail_reason"] = reason
    # With tell (in its transaction): a finished trial takes no more attributes.
    system = recorder.record(trial, state, record.curve, slot.training_seconds, _title(slot))
    diverged = DIVERGED_ATTR in attributes
    if state is not TrialState.FAIL:  # GP wants the constraint on every trial it reads
        system = {**system, internals.constraint_attr("diverged"): 1.0 if diverged else 0.0}
    if slot.checkpoints is not None:
        slot.checkpoints.before_tell(state, diverged)
    backend = rdb_backend(trial.storage)
    try:
        with backend.attrs_with_tell(internals.trial_id(trial), attributes, system):
            # A pruned trial keeps its last reported value, as in study.optimize().
            internals.tell(study, trial, value if state is TrialState.COMPLETE else None, state)
        if slot.checkpoints is not None:
            slot.checkpoints.after_tell(study, state, diverged)
    except optuna.exceptions.UpdateFinishedTrialError:
        # Another process failed it as stale (this worker missed its heartbeats); its retry
        # is already queued, so there is nothing left to record here.
        logger.warning("trial %d was finished by another process", trial.number)


def _run_deadline(study: optuna.Study, run: str, timeout: float) -> float:
    """When the run's wall time ends (epoch seconds): `timeout` after the first trial that a
    worker of the run (named ``run…``) started; this worker's first trial is one of them.
    Other workers' trials count so that a worker Ray restarts late gets no time of its own."""
    starts = [
        trial.datetime_start.timestamp()  # naive local time, as Optuna gives it
        for trial in study.get_trials(deepcopy=False)
        if trial.datetime_start and str(trial.user_attrs.get("worker", "")).startswith(run)
    ]
    return min(starts, default=time.time()) + timeout


def _others_running(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def run_worker(
    spec: StudySpec,
    storage_url: str,
    timeout: float | None = None,
    worker: str | None = None,
    threads: int | None = None,
    node: str | None = None,
    stream: int = 0,
    recorder: TrialRecorder | None = None,
    run: str | None = None,
    stop: Callable[[optuna.Study], bool] | None = None,
) -> WorkerSummary:
    """Train trials of the spec's study until its budget or wall time (`timeout`) ends.

    When no trial is left to claim but others are still running, the worker waits up to one
    grace period for them: if one's worker has died, its trial goes stale and its retry is
    claimed here instead of being left for nobody.

    Args:
        spec: the validated study spec (the study must already exist in storage).
        storage_url: the study database.
        timeout: stop claiming trials this many seconds after the run's first trial started
            (not after Ray's start-up, which a short timeout could otherwise use up).
        worker: a name recorded on each trial (host:pid by default).
        threads: torch CPU threads for this worker (its share of the cores).
        node: the machine recorded on each trial (the host name by default).
        stream: this worker's index among those sampling the study at once, so that no two
            draw the same trials (see tuner.study.lifecycle.sampler_seed).
        recorder: records each finished trial beyond its database row (default: its learning
            curve as an artifact, `tuner.storage.artifacts.LearningCurveRecorder`).
        run: the run this worker is part of, the prefix of its workers' names: `timeout`
            counts from the first trial any of them started (default: this worker's).
        stop: asked before each claim; once it returns True no more trials are claimed
            (bench/search_efficiency.py stops a study once some trial reaches its target).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if threads:
        torch.set_num_threads(threads)
    summary = WorkerSummary(worker or f"{socket.gethostname()}:{os.getpid()}")
    execution = spec.execution
    storage = open_storage(
        storage_url,
        heartbeat=(execution.heartbeat_seconds, execution.grace_seconds),
        reconnect_seconds=execution.reconnect_seconds,
        wait_for_database=True,
    )
    study = studies.load(spec, storage, stream)
    device = pick_device()
    identity = {"worker": summary.worker, "node": node or socket.gethostname()}
    capacity = trials_per_worker(execution.trials_per_worker, device)
    recorder = recorder or LearningCurveRecorder()
    running = _Running(study, spec, device, capacity, recorder)
    idle_since: float | None = None
    swept = next_claim = 0.0
    deadline: float | None = None
    # Idle with others' trials running, wait long enough to see a dead worker's trial go
    # stale (grace, heard from the database: see RetryingRDBStorage.stale_silences) and be
    # swept (once a heartbeat interval), and to claim its retry.
    patience = execution.grace_seconds + 2 * execution.heartbeat_seconds
    with (
        user_loop(spec, storage_url) as running.user_loop,
        heartbeat(storage, running.trial_ids) as beats,
    ):
        try:
            while True:
                beats.check()
                now = time.monotonic()
                if now - swept >= execution.heartbeat_seconds:  # staleness moves no faster
                    studies.fail_stale_trials(study)
                    swept = now
                claiming = deadline is None or time.time() < deadline
                if claiming and len(running) < capacity and now >= next_claim and stop:
                    claiming = not stop(study)
                    next_claim = now if claiming else now + IDLE_POLL_SECONDS
                if claiming and len(running) < capacity and now >= next_claim:
                    trial = studies.claim_trial(study, spec, identity)
                    if trial is not None:
                        idle_since = None
                        running.start(trial)
                        if timeout is not None and deadline is None:
                            deadline = _run_deadline(study, run or summary.worker, timeout)
                        continue  # fill every place before the next step
                    next_claim = now + IDLE_POLL_SECONDS
                if running:
                    running.step()
                    continue
                idle_since = idle_since or now
                waited = min(now - idle_since, storage.seconds_in_contact())
                if not claiming or not _others_running(study) or waited > patience:
                    break
                time.sleep(IDLE_POLL_SECONDS)
        except KeyboardInterrupt:  # Ctrl-C, or the Ray task cancelled: re-run on resume
            running.stop_all("interrupted: the worker was stopped", interrupted=True)
            raise
        except StorageUnreachableError as error:
            running.stop_all(f"interrupted: {error}", interrupted=True)
            raise
        except BaseException as error:
            running.stop_all(f"the worker stopped: {type(error).__name__}: {error}", False)
            raise
        finally:
            summary.trials = running.finished
            recorder.finish()  # the curves still being drawn
    return summary
