"""`run()`: create or resume a study, run its workers to the end of the budget, return it.

The driver side of a study: it checks the storage and the workload's data, creates or resumes
the study, launches the workers on Ray and, if interrupted, makes sure no trial of its workers
is left RUNNING.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from tuner import study as studies
from tuner.errors import StorageError
from tuner.spec import StudySpec, parse_spec
from tuner.storage import open_storage, resolve_storage_url
from tuner.workloads import preflight


def with_overrides(
    spec: StudySpec,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    storage: str | None = None,
    trials_per_worker: int | str | None = None,
) -> StudySpec:
    """The spec with command-line execution settings applied (the CLI beats the file).

    Raises:
        SpecError: an override is invalid (``workers=0``), like the same key in the file.
    """
    updates = {
        "workers": workers,
        "ray_address": ray_address,
        "storage": storage,
        "trials_per_worker": trials_per_worker,
    }
    updates = {key: value for key, value in updates.items() if value is not None}
    if not updates:
        return spec
    data = spec.to_dict()
    data["execution"] = {**data["execution"], **updates}
    return parse_spec(data, "command line")


def _fail_orphans(study: optuna.Study, run_id: str) -> None:
    """Fail the RUNNING trials of this run's workers (after Ctrl-C), recording why."""
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if str(trial.user_attrs.get("worker", "")).startswith(run_id):
            try:
                storage.set_trial_user_attr(trial._trial_id, "fail_reason", "interrupted by Ctrl-C")
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # its worker finished it first


def run(
    spec: StudySpec,
    *,
    on_start: Callable[[optuna.Study, str], None] | None = None,
    on_tick: Callable[[], None] | None = None,
) -> optuna.Study:
    """Run a study to the end of its budget and return it.

    Args:
        spec: the validated study spec (see `load_spec` and `with_overrides`).
        on_start: called with the study and its storage URL once it exists.
        on_tick: called about twice a second while the workers run (progress display).

    Raises:
        StorageError: the storage cannot be reached, or is SQLite for a multi-machine cluster.
        DatasetMissingError: the workload's data files are not on this machine.
        SpecError: the study exists with another search space, or no Ray node can hold a
            worker's CPUs or GPUs.
        ClusterUnreachableError: ``ray_address`` does not answer.
    """
    url = resolve_storage_url(None, spec.execution.storage)
    if url.startswith("sqlite") and spec.execution.ray_address:
        raise StorageError(
            "SQLite serves one machine, and workers on other nodes cannot share it: give a "
            "PostgreSQL storage (--storage postgresql+psycopg://user@host/db) for a cluster"
        )
    if not spec.execution.ray_address:  # on a cluster the data lives on the workers' nodes
        preflight(spec.workload)
    storage = open_storage(url)
    from tuner.execution.ray import run_on_ray, start_ray

    start_ray(spec.execution)  # an unreachable cluster or too few GPUs: before any write
    study = studies.create_or_resume(spec, storage)
    if on_start:
        on_start(study, url)
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    try:
        run_on_ray(spec, url, run_id, spec.budget.timeout_seconds, on_tick or (lambda: None))
    except KeyboardInterrupt:
        _fail_orphans(study, run_id)
        raise
    return study
