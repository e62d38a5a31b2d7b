"""`run()`: create or resume a study, run its workers to the end of the budget, return it.

The driver side of a study: it checks the storage and the workload's data, creates or resumes
the study, launches the workers (on Ray or as local processes: tuner.execution.backend) and, if
interrupted (Ctrl-C, Ray or a worker process failing, the database gone past the retry window),
makes sure no trial of its workers that it can still mark is left RUNNING: each is re-run when
the study resumes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from tuner.errors import (
    ExecutionError,
    SpecError,
    StorageError,
    StorageUnreachableError,
    StudyNotFoundError,
)
from tuner.execution import backend
from tuner.spec import StudySpec, parse_spec
from tuner.storage import optuna_internals as internals
from tuner.storage.rdb import open_storage, rdb_backend, resolve_storage_url
from tuner.storage.urls import sqlite_file
from tuner.study import confirmation, warm_start
from tuner.study import lifecycle as studies
from tuner.study.results import outside_budget
from tuner.workloads import preflight


def with_overrides(
    spec: StudySpec,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    storage: str | None = None,
    trials_per_worker: int | str | None = None,
    warm_start: list[str] | None = None,
) -> StudySpec:
    """The spec with command-line execution settings applied (the CLI beats the file), and
    ``--warm-start`` studies added to the file's.

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
    added = [name for name in dict.fromkeys(warm_start or []) if name not in spec.search.warm_start]
    if not updates and not added:
        return spec
    data = spec.to_dict()
    data["execution"] = {**data["execution"], **updates}
    data["search"] = {**data["search"], "warm_start": [*spec.search.warm_start, *added]}
    return parse_spec(data, "command line")


def _interrupt_orphans(study: optuna.Study, run_id: str, reason: str) -> None:
    """Interrupt the RUNNING trials of this run's workers (they are stopped), recording why:
    each is re-run when the study resumes. Trials it cannot mark (the database is gone) are
    left to the next process that opens the study (RetryingRDBStorage.stale_silences)."""
    try:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if str(trial.user_attrs.get("worker", "")).startswith(run_id):
                studies.interrupt(study, internals.trial_id(trial), reason)
    except StorageUnreachableError:
        pass  # the error that stops the run says so already


def existing_storage(spec: StudySpec, url: str) -> optuna.storages.BaseStorage | None:
    """The storage at `url`, or None for a SQLite file that does not exist yet: opening would
    create it, and a refusal (exit 2) before the study is created must leave nothing behind."""
    path = sqlite_file(url)
    if path is not None and not path.exists():
        return None
    return open_storage(url, reconnect_seconds=spec.execution.reconnect_seconds)


def warm_start_sources(spec: StudySpec, url: str) -> list[warm_start.Source]:
    """The spec's warm-start studies, checked, if its study is still to be created (a warm
    start seeds a new study only); [] otherwise.

    Raises:
        SpecError: a warm-start study trains another workload or metric.
        StudyNotFoundError: a warm-start study is not in the storage.
    """
    storage = existing_storage(spec, url)
    if storage is None:  # a new file holds no study to warm-start from
        if spec.search.warm_start:
            raise StudyNotFoundError(
                f"[search] warm_start: no study named {spec.search.warm_start[0]!r}: "
                f"{sqlite_file(url)} does not exist (no study has been run there; give the "
                "right --storage)"
            )
        return []
    if studies.recorded_spec(spec.name, storage) is not None:
        return []
    return warm_start.check_sources(spec, storage, url)


def create_study(
    spec: StudySpec, url: str, sources: list[warm_start.Source] | None = None
) -> tuple[optuna.Study, list[warm_start.Transfer]]:
    """Create the study, warm-started from `sources` (by default `warm_start_sources`), or
    resume it; return it with what each earlier study gave it (nothing on a resume).

    Raises:
        SpecError: the study exists with another search space or warm start, or a warm-start
            study trains another workload or metric.
        StudyNotFoundError: a warm-start study is not in the storage.
    """
    if sources is None:
        sources = warm_start_sources(spec, url)
    storage = open_storage(url, reconnect_seconds=spec.execution.reconnect_seconds)
    study = studies.create_or_resume(spec, storage)
    if not sources:
        return study, []
    try:
        return study, warm_start.seed(study, spec, sources)
    except BaseException:  # a half-seeded study would resume as if seeded: none at all
        optuna.delete_study(study_name=spec.name, storage=storage)
        raise


def run(
    spec: StudySpec,
    *,
    on_start: Callable[[optuna.Study, str], None] | None = None,
    on_tick: Callable[[], None] | None = None,
    say: Callable[[str], None] = print,
) -> optuna.Study:
    """Run a study to the end of its budget, then confirm its winners if the spec asks
    (tuner.study.confirmation), and return it.

    Args:
        spec: the validated study spec (see `load_spec` and `with_overrides`).
        on_start: called with the study and its storage URL once it exists.
        on_tick: called about twice a second while the workers run (progress display).
        say: prints a line for the user (what a warm start or a confirmation did).

    Raises:
        StorageError: the storage cannot be reached, or is SQLite for a multi-machine cluster.
        StorageUnreachableError: the storage was lost for longer than the retry window.
        ExecutionError: Ray, or a local worker process, failed under the study (its trials
            are re-run on resume).
        DatasetMissingError: the workload's data files are not on this machine.
        SpecError: the study exists with another search space or warm start, a warm-start
            study trains another workload or metric, or no Ray node can hold a worker's CPUs
            or GPUs.
        StudyNotFoundError: a warm-start study is not in the storage.
        ClusterUnreachableError: ``ray_address`` does not answer.
    """
    backend.warm_up(spec.execution)
    url = resolve_storage_url(None, spec.execution.storage)
    if url.startswith("sqlite") and spec.execution.ray_address:
        raise StorageError(
            "SQLite serves one machine, and workers on other nodes cannot share it: give a "
            "PostgreSQL storage (--storage postgresql+psycopg://user@host/db) for a cluster"
        )
    storage = existing_storage(spec, url)
    finished = None if storage is None else studies.finished_study(spec, storage)
    if finished is not None:  # nothing to start Ray, check data or claim trials for
        say(
            f"{spec.name} is finished: {spec.budget.trials} of {spec.budget.trials} trials; "
            "give it a larger budget (--trials N) to run more"
        )
        return finished
    if spec.execution.ray_address:  # the code travels; the data lives on the workers' nodes
        from tuner.execution.shipping import check_shippable

        check_shippable(spec)
    else:
        preflight(spec.workload)
        if spec.execution.trials_per_worker != 1 and spec.declared_params():
            from tuner.execution.stacked import shape_changing_param

            if (reason := shape_changing_param(spec)) is not None:
                raise SpecError(reason)
    sources = warm_start_sources(spec, url)
    # An unreachable cluster or too few GPUs: before any write.
    backend.prepare(spec.execution, say)
    study, transfers = create_study(spec, url, sources)
    if on_start:
        on_start(study, url)
    for transfer in transfers:
        say(transfer.describe())
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    tick = on_tick or (lambda: None)
    try:
        backend.run_workers(spec, url, run_id, spec.budget.timeout_seconds, tick)
        if spec.budget.confirm:
            queued = confirmation.queue_runs(study, spec)
            say(queued.describe(spec.budget.confirm.seeds))
            if queued.runs:
                backend.run_workers(queued_only(study, spec), url, run_id, None, tick)
    except KeyboardInterrupt:
        _interrupt_orphans(study, run_id, "interrupted by Ctrl-C")
        raise
    except StorageUnreachableError as error:
        # A worker's word for it: this process tries each mark once, not for a new window.
        rdb_backend(internals.study_storage(study)).assume_unreachable_since(error.since)
        _interrupt_orphans(study, run_id, f"interrupted: {error}")
        raise
    except ExecutionError as error:
        _interrupt_orphans(study, run_id, f"interrupted: {error}")
        raise
    return study


def queued_only(study: optuna.Study, spec: StudySpec) -> StudySpec:
    """The spec with a trial budget of the trials the search made, so that workers claim the
    queued confirmation runs and no new trial (even where the budget was only a timeout)."""
    trials = study.get_trials(deepcopy=False)
    made = len(trials) - outside_budget(trials)
    # Without confirm, which the workers do not read: its top may exceed what a timeout left.
    budget = spec.budget.model_copy(update={"trials": made, "confirm": None})
    return parse_spec({**spec.to_dict(), "budget": budget.model_dump(mode="json")})
