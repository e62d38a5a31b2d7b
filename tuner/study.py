"""Create or resume a study in storage from a spec: sampler, pruner, budget and provenance.

Workers share the trial budget exactly. In one transaction holding the study's row lock (the
lock Optuna's own trial creation takes), a worker claims a WAITING trial (a retry of a trial
whose worker died) if there is one; otherwise it counts the trials made so far and creates
one only while the budget allows (tuner.storage.ResilientRDBStorage.claim_trial). Optuna's
``ask()`` creates a trial unconditionally, which would overshoot a shared budget. (Laying the
budget down as WAITING trials instead made every trial several times dearer: Optuna reloads
all unfinished trials whenever a sampler reads the study.)
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy
import optuna
from optuna.storages._cached_storage import _CachedStorage, _StudyInfo

from tuner.errors import SpecError
from tuner.pruners import make_pruner
from tuner.samplers import make_sampler
from tuner.spec import StudySpec
from tuner.storage import UNCOUNTED_KEYS, rdb_backend
from tuner.storage_urls import mask_url

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
    existing = {summary.study_name: summary for summary in optuna.get_all_study_summaries(storage)}
    spec_data = spec.to_dict()
    if spec_data["execution"]["storage"]:  # recorded for all to read: the dashboard shows it
        spec_data["execution"]["storage"] = mask_url(spec_data["execution"]["storage"])
    if spec.name in existing:
        recorded = existing[spec.name].user_attrs.get("spec", {})
        changed = [
            key
            for key in SEARCH_DEFINING
            if _searched(recorded.get(key)) != _searched(spec_data[key])
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
    if spec.name not in existing:
        from tuner.note import write_study_note

        write_study_note(study, spec)  # the study's description, written once, when created
    return study


#: Keys of recorded spec parts that do not define the search space: where the study file
#: was (``[workload] search_path``: a study resumed from another folder keeps its space) and
#: the warm-start studies (``[search] warm_start``: they only seed a new study).
NOT_SEARCHED = ("search_path", "warm_start")


def _searched(part: Any) -> Any:
    """A recorded spec part without its `NOT_SEARCHED` keys."""
    if isinstance(part, dict):
        return {key: value for key, value in part.items() if key not in NOT_SEARCHED}
    return part


def claim_trial(study: optuna.Study, spec: StudySpec) -> optuna.Trial | None:
    """A trial for this worker: a waiting retry, else a new one while the budget lasts.

    Returns None once ``[budget] trials`` trials have been handed out (see `outside_budget`).
    """
    study._thread_local.cached_all_trials = None  # samplers see fresh trials, as in ask()
    claimed = rdb_backend(study._storage).claim_trial(
        study._study_id, spec.budget.trials, lambda index: _new_trial_attrs(spec, index)
    )
    if claimed is None:
        return None
    _remember(study, claimed)
    return optuna.Trial(study, claimed._trial_id)


def _new_trial_attrs(spec: StudySpec, index: int) -> dict[str, Any]:
    """No parameter is fixed, except under the grid sampler, where the budget's index-th trial
    trains optimizer index mod n (Optuna's ``fixed_params`` system attribute)."""
    if spec.sampler.name != "grid":
        return {}
    optimizers = spec.search.optimizers
    return {"fixed_params": {"optimizer": optimizers[index % len(optimizers)]}}


def _remember(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Put a trial claimed past Optuna's trial cache into it, as its create_new_trial() does:
    the cache must know a trial before the trial's first parameter is set."""
    cache = study._storage
    if not isinstance(cache, _CachedStorage):
        return
    with cache._lock:
        cached = cache._studies.setdefault(study._study_id, _StudyInfo())
        cache._add_trials_to_cache(study._study_id, [trial])
        cached.unfinished_trial_ids.add(trial._trial_id)  # re-read until it finishes


def outside_budget(trials: list[optuna.trial.FrozenTrial]) -> int:
    """How many trials the budget does not count: retries of trials whose worker died,
    warm-start copies and confirmation runs (see tuner.storage.UNCOUNTED_KEYS)."""
    return sum(any(key in trial.system_attrs for key in UNCOUNTED_KEYS) for trial in trials)
