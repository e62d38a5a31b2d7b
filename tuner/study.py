"""Create or resume a study in storage from a spec: sampler, pruner, budget and provenance.

The trial budget is laid down as WAITING trials ("slots") when the study is created or
resumed. Workers only ever claim a slot, never create a trial, so a budget shared by any
number of workers is spent exactly, and a resumed study tops the slots up to the budget.
"""

from __future__ import annotations

import json
import warnings

import optuna
from optuna.trial import TrialState

from tuner.errors import SpecError
from tuner.spec import StudySpec

# Heartbeat callbacks, fail_stale_trials and grouped multivariate TPE are marked experimental
# in Optuna 5; we rely on them on purpose, so their warnings would only be noise to users.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

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
        laid_down = len(study.get_trials(deepcopy=False))
        for number in range(laid_down, spec.budget.trials):
            study.enqueue_trial(_slot_params(spec, number))
    return study


def _slot_params(spec: StudySpec, number: int) -> dict[str, str]:
    """What a budget slot fixes: nothing, or its optimizer under the grid sampler."""
    if spec.sampler.name != "grid":
        return {}
    optimizers = spec.search.optimizers
    return {"optimizer": optimizers[number % len(optimizers)]}


def claim_trial(study: optuna.Study, unbounded: bool) -> optuna.Trial | None:
    """Claim a WAITING trial (a budget slot or a retry) atomically; None when none is left.

    Optuna's ``ask()`` creates a new trial when no WAITING one is left, which would overshoot
    a budget shared by workers; so we call its atomic pop and create a trial only when the
    budget is a wall time alone (`unbounded`).
    """
    study._thread_local.cached_all_trials = None  # see fresh trials, as ask() does
    trial_id = study._pop_waiting_trial_id()
    if trial_id is None:
        if not unbounded:
            return None
        trial_id = study._storage.create_new_trial(study._study_id)
    return optuna.Trial(study, trial_id)


def spec_json(spec: StudySpec) -> str:
    """The spec as compact JSON, what workers receive."""
    return json.dumps(spec.to_dict(), separators=(",", ":"))


def count_states(trials: list[optuna.trial.FrozenTrial]) -> dict[TrialState, int]:
    """How many trials are in each state."""
    counts = dict.fromkeys(TrialState, 0)
    for trial in trials:
        counts[trial.state] += 1
    return counts
