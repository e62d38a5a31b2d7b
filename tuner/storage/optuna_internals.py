"""Every use of Optuna's private API, behind one door: what tuner assumes of Optuna's insides.

Optuna's public API has no way to claim a trial under a budget, to read a study's trials in a
few statements, or to put a trial it did not create into its trial cache; tuner does those
things on Optuna's own schema and objects (see tuner.storage.rdb and tuner.study.lifecycle).
Every private name they need is spelled here and nowhere else, and each assumption made about it
has its own test in tests/storage/test_optuna_internals.py, so an Optuna release that breaks one
fails one named test instead of a study.
"""

from __future__ import annotations

from collections.abc import Container, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution
from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.study import StudyDirection
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY
from optuna.study._tell import _tell_with_warning
from optuna.trial import FrozenTrial, TrialState


def table(name: str) -> sqlalchemy.Table:
    """A table of Optuna's RDB schema by name (``trials``, ``trial_params``, ``trial_values``,
    ``trial_intermediate_values``, ``trial_user_attributes``, ``trial_system_attributes``,
    ``trial_heartbeats``, ``studies``), for SQL written on the schema as Optuna defines it."""
    return models.BaseModel.metadata.tables[name]


@contextmanager
def session(storage: optuna.storages.RDBStorage) -> Iterator[sqlalchemy.orm.Session]:
    """A session of the storage's pool in one transaction, committed at the end, rolled back
    on an error (the session Optuna's own RDBStorage methods run in)."""
    with _create_scoped_session(storage.scoped_session) as opened:
        yield opened


def stored_value(number: float, type_name: str) -> float:
    """A trial's objective value as Optuna reads it back from ``trial_values`` (its value and
    value_type columns: infinities are stored as a type, the value as NULL)."""
    model = models.TrialValueModel
    return model.stored_repr_to_value(number, model.TrialValueType[type_name])


def stored_intermediate_value(number: float, type_name: str) -> float:
    """An intermediate value as Optuna reads it back from ``trial_intermediate_values`` (NaN
    and infinities are stored as a type)."""
    model = models.TrialIntermediateValueModel
    return model.stored_repr_to_intermediate_value(
        number, model.TrialIntermediateValueType[type_name]
    )


def stored_time(utc: datetime | None) -> datetime | None:
    """A trial's start or end time as Optuna returns it: stored as naive UTC, returned as naive
    local time (its TrialModel's datetime_start/datetime_complete properties)."""
    if utc is None:
        return None
    return utc.replace(tzinfo=UTC).astimezone().replace(tzinfo=None)


def time_to_store(local: datetime) -> datetime:
    """The inverse of stored_time: a naive local time as Optuna stores it (naive UTC)."""
    return local.astimezone(UTC).replace(tzinfo=None)


def set_trial_attr_in(
    storage: optuna.storages.RDBStorage,
    session: sqlalchemy.orm.Session,
    system: bool,
    trial_id: int,
    key: str,
    value: Any,
) -> None:
    """Optuna's own write of one user (or system) attribute inside a transaction: the way
    used on databases where tuner has no one-statement upsert."""
    model = models.TrialSystemAttributeModel if system else models.TrialUserAttributeModel
    storage._set_trial_attr_without_commit(session, model, trial_id, key, value)


def constraint_attr(name: str) -> str:
    """The system attribute ``Trial.set_constraint(name, …)`` writes, which constrained
    samplers read back as the trial's constraint `name`: spelled here so that a worker can
    write it with the trial's other attributes (set_constraint costs a read and a transaction
    of its own)."""
    return f"{_CONSTRAINTS_KEY}:{name}"


def is_constraint_attr(key: str) -> bool:
    """Whether a system attribute holds a trial's constraint: one per name (what
    `constraint_attr` spells), or the list older Optuna releases wrote under one key."""
    return key == _CONSTRAINTS_KEY or key.startswith(constraint_attr(""))


def tell(study: optuna.Study, trial: optuna.Trial, value: float | None, state: TrialState) -> None:
    """``study.tell`` as Optuna's own ``study.optimize`` tells a trial: without reading the
    finished trial back for a copy that the worker would not use (a read and a transaction).

    Raises:
        optuna.exceptions.UpdateFinishedTrialError: another process finished the trial first
            (failed it as stale), whether Optuna found it so when it read the trial (it
            raises a ValueError then) or when it wrote.
    """
    try:
        _tell_with_warning(study=study, trial=trial, value_or_values=value, state=state)
    except ValueError:
        if study._storage.get_trial(trial._trial_id).state.is_finished():
            raise optuna.exceptions.UpdateFinishedTrialError(
                f"trial {trial.number} was finished by another process"
            ) from None
        raise


def record_heartbeat_in(session: sqlalchemy.orm.Session, trial_id: int) -> None:
    """Optuna's write of a trial's heartbeat (the server's time) inside a transaction: the way
    used on databases where tuner has no one-statement upsert."""
    now = sqlalchemy.func.current_timestamp()
    heartbeat = models.TrialHeartbeatModel.where_trial_id(trial_id, session, True)
    if heartbeat is None:
        session.add(models.TrialHeartbeatModel(trial_id=trial_id, heartbeat=now))
    else:
        heartbeat.heartbeat = now


class RDBStorageHooks(optuna.storages.RDBStorage):
    """Optuna's RDBStorage with the private methods that Optuna's trial cache calls on it
    (``_CachedStorage``, which every study puts in front of its RDBStorage) forwarded to public
    names of our own, so a subclass overrides those and never a private name.

    A storage that retries or reads faster must cover these calls too: a study reads its
    trials through ``_get_trials``, not ``get_all_trials``. PRIVATE_CALLS lists them, and a
    test checks it against what ``_CachedStorage`` calls.
    """

    #: Our name for each private RDBStorage method that Optuna's trial cache calls.
    PRIVATE_CALLS: ClassVar[dict[str, str]] = {
        "_create_new_trial": "create_frozen_trial",
        "_set_trial_param": "set_trial_param_checked",
        "_get_trials": "read_trials",
        "_get_best_trial_id": "best_trial_id",
        "_get_stale_trial_ids": "stale_trial_ids",
    }

    # Optuna's names, forwarded to ours (the arguments are Optuna's: a test checks them).
    def _create_new_trial(self, *args: Any, **kwargs: Any) -> FrozenTrial:
        return self.create_frozen_trial(*args, **kwargs)

    def _set_trial_param(self, *args: Any, **kwargs: Any) -> None:
        self.set_trial_param_checked(*args, **kwargs)

    def _get_trials(self, *args: Any, **kwargs: Any) -> list[FrozenTrial]:
        return self.read_trials(*args, **kwargs)

    def _get_best_trial_id(self, *args: Any, **kwargs: Any) -> int:
        return self.best_trial_id(*args, **kwargs)

    def _get_stale_trial_ids(self, *args: Any, **kwargs: Any) -> list[int]:
        return self.stale_trial_ids(*args, **kwargs)

    # Ours, doing by default what Optuna's do.
    def create_frozen_trial(
        self, study_id: int, template_trial: FrozenTrial | None = None
    ) -> FrozenTrial:
        """A new trial of the study (from the template, if given), as a FrozenTrial."""
        return super()._create_new_trial(study_id, template_trial)

    def set_trial_param_checked(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
        previous_distribution: BaseDistribution | None,
    ) -> None:
        """Set a parameter, checked against the distribution the study already has for it."""
        super()._set_trial_param(
            trial_id, param_name, param_value_internal, distribution, previous_distribution
        )

    def read_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        """The study's trials in `states` (all if None) that are in `included_trial_ids` or
        have an id above `trial_id_greater_than` (all, if it is -1): the trial cache's read."""
        return super()._get_trials(study_id, states, included_trial_ids, trial_id_greater_than)

    def best_trial_id(self, study_id: int, direction: StudyDirection) -> int:
        """The id of the study's best COMPLETE trial in `direction`."""
        return super()._get_best_trial_id(study_id, direction)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """The study's RUNNING trials whose heartbeat is older than the grace period."""
        return super()._get_stale_trial_ids(study_id)


def backend(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """The storage under the trial cache Optuna wraps an RDBStorage in when a study loads it."""
    return storage._backend if isinstance(storage, _CachedStorage) else storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """A trial's id in storage (Optuna hands it to storages, not to users)."""
    return trial._trial_id


def study_id(study: optuna.Study) -> int:
    """A study's id in storage."""
    return study._study_id


def study_storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study reads and writes through (the trial cache, for an RDBStorage)."""
    return study._storage


def remember_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Put a trial created past Optuna's trial cache into it, as the cache's own
    create_new_trial() does: the cache must know a trial before its first parameter is set,
    and re-reads it until it finishes. Also drops the study's per-thread copy of its trials,
    so samplers see the new one, as ask() does."""
    study._thread_local.cached_all_trials = None
    cache = study._storage
    if not isinstance(cache, _CachedStorage):
        return
    with cache._lock:
        cached = cache._studies.setdefault(study._study_id, _StudyInfo())
        cache._add_trials_to_cache(study._study_id, [trial])
        cached.unfinished_trial_ids.add(trial._trial_id)


def claimed_system_attrs(trial: optuna.Trial) -> dict[str, Any]:
    """The system attributes a trial had when it was claimed, as Optuna's Trial read them
    (no query: Trial.system_attrs would read them again)."""
    return trial._cached_frozen_trial.system_attrs
