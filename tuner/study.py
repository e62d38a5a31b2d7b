"""Create or resume a study in storage from a spec: sampler, pruner, budget and provenance.

The trial budget is handed out as WAITING trials ("slots") numbered 0 … trials−1. Only a
window of SLOT_WINDOW slots is laid down ahead: the worker that claims slot i lays down slot
i + SLOT_WINDOW. Each slot is claimed exactly once (Optuna's atomic WAITING → RUNNING), so
each successor is laid exactly once, and a budget shared by any number of workers is spent
exactly, with no lock. Workers never create trials of their own (Optuna's ``ask()`` would).
The window stays small because Optuna reloads every unfinished trial whenever a sampler
reads the study.
"""

from __future__ import annotations

import warnings

import optuna
from optuna.trial import TrialState

from tuner.errors import SpecError
from tuner.spec import StudySpec

# Heartbeat callbacks, fail_stale_trials and grouped multivariate TPE are marked experimental
# in Optuna 5; we rely on them on purpose, so their warnings would only be noise to users.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

#: WAITING slots laid down ahead of the workers. Optuna loads each of them, attribute by
#: attribute, every time a sampler reads the study, so the window is kept small; a worker
#: that finds none waiting while others still run polls again shortly.
SLOT_WINDOW = 16
#: The system attribute holding a slot's index in the budget.
SLOT_ATTR = "tuner:slot"

#: The parts of a spec that define the search space; a resumed study must keep them.
SEARCH_DEFINING = ("workload", "metric", "direction", "search", "optimizers")


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded; TPE is multivariate with constant liar for parallel workers."""
    name, seed, startup = spec.sampler.name, spec.seed, spec.sampler.n_startup_trials
    if name == "tpe":
        # group=True: multivariate TPE over a conditional space models each optimizer's
        # parameters together instead of falling back to independent sampling.
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=startup, multivariate=True, group=True, constant_liar=True
        )
    if name in ("random", "grid"):  # grid: the optimizer is fixed per trial at enqueue time
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(
            seed=seed, n_startup_trials=startup, warn_independent_sampling=False
        )
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.GPSampler(
        seed=seed, n_startup_trials=startup, warn_independent_sampling=False
    )


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The spec's pruner; resources are epochs."""
    pruner = spec.pruner
    if pruner.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=pruner.min_resource,
            max_resource=spec.budget.epochs,
            reduction_factor=pruner.reduction_factor,
        )
    if pruner.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=pruner.n_startup_trials, n_warmup_steps=pruner.n_warmup_steps
        )
    if pruner.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=pruner.min_resource, reduction_factor=pruner.reduction_factor
        )
    if pruner.name == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(n_startup_steps=pruner.n_warmup_steps)
    return optuna.pruners.NopPruner()


def load(spec: StudySpec, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Attach to an existing study with the spec's sampler and pruner (what workers do)."""
    return optuna.load_study(
        study_name=spec.name, storage=storage, sampler=make_sampler(spec), pruner=make_pruner(spec)
    )


def create_or_resume(spec: StudySpec, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create the study, or resume it if it exists with the same search space.

    Raises:
        SpecError: the study exists with another search space or direction.
    """
    existing = {summary.study_name: summary for summary in optuna.get_all_study_summaries(storage)}
    if spec.name in existing:
        recorded = existing[spec.name].user_attrs.get("spec", {})
        new = spec.to_dict()
        changed = [key for key in SEARCH_DEFINING if recorded.get(key) != new[key]]
        if changed:
            raise SpecError(
                f"study {spec.name!r} already exists with a different {', '.join(changed)}; "
                "resume it with the same study file, or give the new one another name"
            )
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        direction=spec.direction,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        load_if_exists=True,
    )
    study.set_user_attr("spec", spec.to_dict())
    study.set_user_attr("metric", spec.metric)
    if spec.budget.trials is not None:
        _lay_missing_slots(study, spec)
    return study


def _lay_missing_slots(study: optuna.Study, spec: StudySpec) -> None:
    """Lay the first window, and the successor of every claimed slot that lacks one.

    On a new study that is slots 0 … SLOT_WINDOW−1. On a resumed one it also covers a worker
    that died between its claim and laying the next slot, and a budget that grew.
    """
    laid = {
        _slot_of(trial.system_attrs): trial.state
        for trial in study.get_trials(deepcopy=False)
        if _slot_of(trial.system_attrs) is not None
    }
    claimed = {slot for slot, state in laid.items() if state != TrialState.WAITING}
    for slot in range(spec.budget.trials):
        if slot not in laid and (slot < SLOT_WINDOW or slot - SLOT_WINDOW in claimed):
            _lay_slot(study, spec, slot)


def _lay_slot(study: optuna.Study, spec: StudySpec, slot: int) -> None:
    """Add the WAITING trial of budget slot `slot` (what enqueue_trial does, plus its index).

    It fixes no parameter, so the sampler chooses them all, except under the grid sampler,
    where slot i trains optimizer i mod n.
    """
    fixed = {}
    if spec.sampler.name == "grid":
        optimizers = spec.search.optimizers
        fixed = {"optimizer": optimizers[slot % len(optimizers)]}
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING, system_attrs={"fixed_params": fixed, SLOT_ATTR: slot}
        )
    )


def retries(trials: list[optuna.trial.FrozenTrial]) -> int:
    """How many trials are retries of trials whose worker died (beyond the budget)."""
    return sum("failed_trial" in trial.system_attrs for trial in trials)


def claim_trial(study: optuna.Study, spec: StudySpec) -> optuna.Trial | None:
    """Claim a WAITING trial (a slot or a retry) and lay down the slot that follows it.

    Returns None when no trial is waiting; with a budget of wall time alone, a new trial is
    created instead.
    """
    study._thread_local.cached_all_trials = None  # samplers see fresh trials, as in ask()
    trial_id = study._pop_waiting_trial_id()  # Optuna's atomic claim, as ask() uses
    if trial_id is None:
        if spec.budget.trials is not None:
            return None
        trial_id = study._storage.create_new_trial(study._study_id)
    trial = optuna.Trial(study, trial_id)
    slot = _slot_of(study._storage.get_trial_system_attrs(trial_id))
    if slot is not None and slot + SLOT_WINDOW < spec.budget.trials:
        _lay_slot(study, spec, slot + SLOT_WINDOW)
    return trial


def _slot_of(system_attrs: dict) -> int | None:
    """A trial's budget slot; None for a retry, whose copied attributes name its original's."""
    return None if "failed_trial" in system_attrs else system_attrs.get(SLOT_ATTR)


def count_states(trials: list[optuna.trial.FrozenTrial]) -> dict[TrialState, int]:
    """How many trials are in each state."""
    counts = dict.fromkeys(TrialState, 0)
    for trial in trials:
        counts[trial.state] += 1
    return counts
