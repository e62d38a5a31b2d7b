"""Create or resume a study in storage from a spec: sampler, pruner, budget and provenance.

Workers share the trial budget exactly. In one transaction holding the study's row lock (the
lock Optuna's own trial creation takes), a worker claims a WAITING trial (a retry of a trial
whose worker died) if there is one; otherwise it counts the trials made so far and creates
one only while the budget allows (tuner.storage.rdb.FastRDBStorage.claim_trial). Optuna's
``ask()`` creates a trial unconditionally, which would overshoot a shared budget. (Laying the
budget down as WAITING trials instead made every trial several times dearer: Optuna reloads
all unfinished trials whenever a sampler reads the study.)
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy
import optuna
from optuna.trial import TrialState

from tuner.errors import SpecError
from tuner.search.pruners import make_pruner
from tuner.search.samplers import make_sampler
from tuner.spec import ExecutionSpec, StudySpec
from tuner.storage import optuna_internals as internals
from tuner.storage.checkpoints import ORIGIN_KEY, origin_of
from tuner.storage.rdb import INTERRUPTED_KEY, open_storage, rdb_backend
from tuner.storage.urls import mask_url
from tuner.study.results import outside_budget

# Heartbeat callbacks, fail_stale_trials and grouped multivariate TPE are marked experimental
# in Optuna 5; we rely on them on purpose, so their warnings would only be noise to users.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

#: The parts of a spec that define the search space; a resumed study must keep them.
SEARCH_DEFINING = ("workload", "metric", "direction", "search", "optimizers")


def sampler_seed(seed: int, stream: int, trials_before: int) -> int:
    """The seed of one worker's sampler.

    Workers seeded alike would draw the same random start-up trials: every worker of a run,
    and a resumed run's workers, which would replay the first run's draws. So each gets its
    own stream, from its index in the run and the trials the study had when it joined. The
    first worker of a new study keeps the spec's seed: a one-worker study reproduces exactly.
    """
    if stream == 0 and trials_before == 0:
        return seed
    return int(numpy.random.SeedSequence([seed, stream, trials_before]).generate_state(1)[0])


def load(spec: StudySpec, storage: optuna.storages.BaseStorage, stream: int = 0) -> optuna.Study:
    """Attach to an existing study with the spec's pruner and a sampler seeded for worker
    `stream` (see sampler_seed): what workers do."""
    study = optuna.load_study(study_name=spec.name, storage=storage, pruner=make_pruner(spec))
    trials_before = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(spec, sampler_seed(spec.seed, stream, trials_before))
    return study


def create_or_resume(spec: StudySpec, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create the study, or resume it if it exists with the same search space.

    Raises:
        SpecError: the study exists with another search space or direction.
    """
    recorded = recorded_spec(spec.name, storage)
    if recorded is not None:
        check_resumable(spec, recorded)
    spec_data = spec.to_dict()
    if spec_data["execution"]["storage"]:  # recorded for all to read: the dashboard shows it
        spec_data["execution"]["storage"] = mask_url(spec_data["execution"]["storage"])
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        direction=spec.direction,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        load_if_exists=True,
    )
    study.set_user_attr("spec", spec_data)
    study.set_user_attr("metric", spec.metric)
    if recorded is None:
        from tuner.study.note import write_study_note

        write_study_note(study, spec)  # the study's description, written once, when created
    return study


def check_resumable(spec: StudySpec, recorded: dict[str, Any]) -> None:
    """Refuse to resume a study recorded with another search space or warm start.

    Raises:
        SpecError: what differs, and what to do.
    """
    spec_data = spec.to_dict()
    changed = [
        key for key in SEARCH_DEFINING if _searched(recorded.get(key)) != _searched(spec_data[key])
    ]
    if changed:
        raise SpecError(
            f"study {spec.name!r} already exists with a different {', '.join(changed)}; "
            "resume it with the same study file, or give the new one another name"
        )
    warm_start = recorded.get("search", {}).get("warm_start", [])
    if warm_start != spec.search.warm_start:
        raise SpecError(
            f"study {spec.name!r} already exists, warm-started from "
            f"{', '.join(warm_start) or 'no study'}; a warm start seeds a new study: give "
            "it another name to warm-start it from "
            f"{', '.join(spec.search.warm_start) or 'no study'}"
        )


def finished_study(spec: StudySpec, storage: optuna.storages.BaseStorage) -> optuna.Study | None:
    """The study, if it exists and its trial budget is spent with nothing left to run or
    confirm; None if a run has work to do (or the budget is a timeout, which only running
    can tell).

    Raises:
        SpecError: the study exists with another search space or warm start.
    """
    recorded = recorded_spec(spec.name, storage)
    if recorded is None or spec.budget.trials is None or spec.budget.confirm is not None:
        return None
    check_resumable(spec, recorded)
    study = optuna.load_study(study_name=spec.name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    if any(not trial.state.is_finished() for trial in trials):
        return None  # a retry waiting, or a trial a lost worker left RUNNING
    return study if len(trials) - outside_budget(trials) >= spec.budget.trials else None


def recorded_spec(name: str, storage: optuna.storages.BaseStorage) -> dict[str, Any] | None:
    """The spec a study of this name was created with ({} if it has none), or None if there is
    no such study. Looked up by name alone: reading every study's summary instead grew with the
    shared database, and failed when another study was deleted meanwhile."""
    try:
        study_id = storage.get_study_id_from_name(name)
        return storage.get_study_user_attrs(study_id).get("spec", {})
    except KeyError:  # no such study, or it was deleted between the two reads
        return None


#: Keys of recorded spec parts that do not define the search space: where the study file
#: was (``[workload] search_path``: a study resumed from another folder keeps its space) and
#: the warm-start studies (``[search] warm_start``: they only seed a new study).
NOT_SEARCHED = ("search_path", "warm_start")


def _searched(part: Any) -> Any:
    """A recorded spec part without its `NOT_SEARCHED` keys."""
    if isinstance(part, dict):
        return {key: value for key, value in part.items() if key not in NOT_SEARCHED}
    return part


def claim_trial(
    study: optuna.Study, spec: StudySpec, user_attrs: dict[str, Any] | None = None
) -> optuna.Trial | None:
    """A trial for this worker, with `user_attrs` (the worker's name and node): a waiting
    retry or re-run, else a new one while the budget lasts.

    Returns None once ``[budget] trials`` trials have been handed out (the count leaves out
    what `tuner.study.results.outside_budget` counts).
    """
    claimed = rdb_backend(internals.study_storage(study)).claim_trial(
        internals.study_id(study),
        spec.budget.trials,
        lambda index: _new_trial_attrs(spec, index),
        user_attrs,
    )
    if claimed is None:
        return None
    # The claim went past Optuna's trial cache, which must know the trial before its first
    # parameter is set; samplers must see it too, as after ask().
    internals.remember_trial(study, claimed)
    return optuna.Trial(study, internals.trial_id(claimed))


def _new_trial_attrs(spec: StudySpec, index: int) -> dict[str, Any]:
    """No parameter is fixed, except under the grid sampler, where the budget's index-th trial
    trains optimizer index mod n (Optuna's ``fixed_params`` system attribute)."""
    if spec.sampler.name != "grid":
        return {}
    optimizers = spec.search.optimizers
    return {"fixed_params": {"optimizer": optimizers[index % len(optimizers)]}}


#: The system attributes a re-run keeps from the trial it re-runs: a retry's stays a retry
#: (outside the budget), a grid trial keeps its optimizer.
_KEPT_BY_RERUNS = ("failed_trial", "retry_history", "fixed_params")


def interrupt(study: optuna.Study, trial_id: int, reason: str) -> bool:
    """End a RUNNING trial that was stopped for no fault of its own (Ctrl-C, its worker
    cancelled, the database gone for good) and queue its re-run; False if it had finished.

    It becomes FAIL with `reason` and ``tuner:interrupted``, which takes it out of the budget;
    its re-run, a WAITING trial with the same parameters, counts instead, so an interrupted
    study trains exactly its budget when resumed. Written in two transactions: if the second
    never happens, the budget still has the trial's place, taken by a new trial.
    """
    storage = rdb_backend(internals.study_storage(study))
    if not storage.fail_trial(trial_id, reason, {INTERRUPTED_KEY: True}):
        return False
    trial = storage.get_trial(trial_id)
    kept = {key: trial.system_attrs[key] for key in _KEPT_BY_RERUNS if key in trial.system_attrs}
    # The re-run continues the line's checkpoint (tuner.storage.checkpoints) and seed stream.
    kept[ORIGIN_KEY] = origin_of(trial.number, trial.system_attrs)
    rerun = optuna.trial.create_trial(
        state=TrialState.WAITING,
        params=trial.params,
        distributions=trial.distributions,
        system_attrs={**kept, "tuner:rerun_of": trial.number},
    )
    storage.create_new_trial(internals.study_id(study), template_trial=rerun)
    return True


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Fail the study's stale trials, each with its ``fail_reason``, and queue their retries;
    the numbers of those this call failed.

    Optuna's own fail_stale_trials records no reason and judges staleness by heartbeats
    alone; which trials are stale here is RetryingRDBStorage.stale_silences's rule, which
    does not count an outage of the database as a worker's silence. Each retry is made by the
    storage's stale-trial callback (Optuna's RetryHeartbeatStaleTrialCallback: once, with the
    same parameters), from the trial as it was, without the reason it failed for.
    """
    storage = rdb_backend(internals.study_storage(study))
    callback = storage.get_heartbeat_stale_trial_callback()
    failed = []
    for trial_id, silent in storage.stale_silences(internals.study_id(study)).items():
        reason = f"no heartbeat for {silent:.0f} s: its worker died, or lost the database"
        if not storage.fail_trial(trial_id, reason):
            continue  # another process failed it, or its worker finished it, first
        trial = storage.get_trial(trial_id)
        failed.append(trial.number)
        if callback is not None:
            trial.user_attrs.pop("fail_reason")  # the retry starts without it
            callback(study, trial)
    return failed


def resolve_abandoned(study_name: str, storage_url: str, execution: ExecutionSpec) -> list[int]:
    """Fail (and queue the retries of) the study's trials that no live worker can be behind
    any more, at once: what ``tuner status`` does before it shows a study, so that the trials
    of a worker that lost its database for good do not show as RUNNING (see
    RetryingRDBStorage.stale_silences). Returns their numbers."""
    storage = open_storage(
        storage_url,
        heartbeat=(execution.heartbeat_seconds, execution.grace_seconds),
        reconnect_seconds=execution.reconnect_seconds,
    )
    return fail_stale_trials(optuna.load_study(study_name=study_name, storage=storage))
