"""Create or resume a study in storage from a spec: sampler, pruner, budget and provenance.

Workers share the trial budget exactly. A worker first claims a WAITING trial (a retry of a
trial whose worker died) with Optuna's atomic pop; otherwise, under a short study-wide lock,
it counts the trials made so far and creates one only while the budget allows. Optuna's
``ask()`` creates a trial unconditionally, which would overshoot a shared budget. (Laying the
budget down as WAITING trials instead made every trial several times dearer: Optuna reloads
all unfinished trials whenever a sampler reads the study.)
"""

from __future__ import annotations

import fcntl
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
import sqlalchemy
from optuna.trial import TrialState

from tuner.errors import SpecError
from tuner.spec import StudySpec
from tuner.storage import rdb_backend

# Heartbeat callbacks, fail_stale_trials and grouped multivariate TPE are marked experimental
# in Optuna 5; we rely on them on purpose, so their warnings would only be noise to users.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

#: The parts of a spec that define the search space; a resumed study must keep them.
SEARCH_DEFINING = ("workload", "metric", "direction", "search", "optimizers")
#: Namespace of the PostgreSQL advisory lock keys (the study id is added): "tuner" in ASCII.
_LOCK_NAMESPACE = 0x74756E6572 << 16
# Hand-written SQL on Optuna's schema: Optuna offers no count of a study's trials that leaves
# out retries, and loading the trials to count them would cost what this module avoids.
_COUNT_BUDGET_TRIALS = sqlalchemy.text(
    "SELECT count(*) FROM trials t WHERE t.study_id = :study_id AND NOT EXISTS ("
    "SELECT 1 FROM trial_system_attributes a WHERE a.trial_id = t.trial_id "
    "AND a.key = 'failed_trial')"
)


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded; TPE is multivariate with constant liar for parallel workers."""
    name, seed, startup = spec.sampler.name, spec.seed, spec.sampler.n_startup_trials
    if name == "tpe":
        # group=True: multivariate TPE over a conditional space models each optimizer's
        # parameters together instead of falling back to independent sampling.
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=startup, multivariate=True, group=True, constant_liar=True
        )
    if name in ("random", "grid"):  # grid: claim_trial fixes the optimizer
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
    spec_data = spec.to_dict()
    if spec.name in existing:
        recorded = existing[spec.name].user_attrs.get("spec", {})
        changed = [key for key in SEARCH_DEFINING if recorded.get(key) != spec_data[key]]
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
    study.set_user_attr("spec", spec_data)
    study.set_user_attr("metric", spec.metric)
    if spec.name not in existing:
        from tuner.dashboard import write_study_note

        write_study_note(study, spec)  # the dashboard's note, written once, when created
    return study


@contextmanager
def _budget_lock(engine: sqlalchemy.Engine, study_id: int) -> Iterator[None]:
    """Serialise count-then-create across every worker of a study, wherever it runs.

    PostgreSQL: a session advisory lock, which the server releases if its holder dies.
    SQLite (one machine): an exclusive flock on a file beside the database, which the kernel
    releases if its holder dies; no SQLite transaction is held meanwhile. MySQL: a named lock.
    """
    if engine.dialect.name == "sqlite":
        with open(f"{engine.url.database}.budget-lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            yield
        return
    key = _LOCK_NAMESPACE + study_id
    lock, unlock = {
        "postgresql": ("SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)"),
        "mysql": (
            "SELECT GET_LOCK(CONCAT('tuner-', :key), -1)",
            "SELECT RELEASE_LOCK(CONCAT('tuner-', :key))",
        ),
    }[engine.dialect.name]
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(lock), {"key": key})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text(unlock), {"key": key})
            connection.commit()


def _count_budget_trials(engine: sqlalchemy.Engine, study_id: int) -> int:
    with engine.connect() as connection:  # its own short transaction, ended on close
        return connection.execute(_COUNT_BUDGET_TRIALS, {"study_id": study_id}).scalar_one()


def claim_trial(study: optuna.Study, spec: StudySpec) -> optuna.Trial | None:
    """A trial for this worker: a waiting retry, else a new one while the budget lasts.

    Returns None once ``[budget] trials`` trials have been handed out (retries not counted).
    """
    study._thread_local.cached_all_trials = None  # samplers see fresh trials, as in ask()
    trial_id = study._pop_waiting_trial_id()  # Optuna's atomic claim, as ask() uses
    if trial_id is None:
        engine = rdb_backend(study._storage).engine
        with _budget_lock(engine, study._study_id):
            index = _count_budget_trials(engine, study._study_id)
            if spec.budget.trials is not None and index >= spec.budget.trials:
                return None
            trial_id = study._storage.create_new_trial(
                study._study_id, template_trial=_new_trial(spec, index)
            )
    return optuna.Trial(study, trial_id)


def _new_trial(spec: StudySpec, index: int) -> optuna.trial.FrozenTrial:
    """A RUNNING trial fixing no parameter, except under the grid sampler, where the budget's
    index-th trial trains optimizer index mod n."""
    fixed = {}
    if spec.sampler.name == "grid":
        optimizers = spec.search.optimizers
        fixed = {"optimizer": optimizers[index % len(optimizers)]}
    return optuna.trial.create_trial(state=TrialState.RUNNING, system_attrs={"fixed_params": fixed})


def retries(trials: list[optuna.trial.FrozenTrial]) -> int:
    """How many trials are retries of trials whose worker died (beyond the budget)."""
    return sum("failed_trial" in trial.system_attrs for trial in trials)


def count_states(trials: list[optuna.trial.FrozenTrial]) -> dict[TrialState, int]:
    """How many trials are in each state."""
    counts = dict.fromkeys(TrialState, 0)
    for trial in trials:
        counts[trial.state] += 1
    return counts
