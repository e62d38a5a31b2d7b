"""Where studies live: storage URL resolution and Optuna's RDBStorage with safe engine options.

One URL names the study database: the argument, else the spec's ``[execution] storage``, else
``TUNER_STORAGE``, else one SQLite file in the user's data folder, so every project on the
machine finds the same studies. Optuna's schema is used as it is, so optuna-dashboard and the
``optuna`` CLI read our studies.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Container
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.distributions import json_to_distribution
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import make_url

from tuner.errors import StorageError
from tuner.storage_urls import mask_url, sqlalchemy_url

#: Seconds a SQLite writer waits for a lock before failing; long, because optuna-dashboard's
#: polling and several workers share one file (optuna-dashboard issue 545).
SQLITE_BUSY_TIMEOUT = 60
#: How long a storage call keeps retrying while the database is unreachable (a PostgreSQL
#: restart, a failover, a SQLite writer holding the lock), and its first and longest waits.
RECONNECT_SECONDS = 120.0
RECONNECT_FIRST_DELAY = 0.25
RECONNECT_MAX_DELAY = 8.0

#: The system attribute naming the claim that took a trial (see claim_trial).
CLAIM_TOKEN_KEY = "tuner:claim"
#: System attributes that keep a trial out of the trial budget's count: a retry of a trial
#: whose worker died (Optuna's ``failed_trial``), and trials tuner adds beyond the search
#: (warm-start copies, confirmation runs: tuner.warm_start, tuner.confirmation).
OUTSIDE_BUDGET_KEY = "tuner:outside_budget"
UNCOUNTED_KEYS = ("failed_trial", OUTSIDE_BUDGET_KEY)

logger = logging.getLogger(__name__)
_Method = TypeVar("_Method", bound=Callable[..., Any])


#: PostgreSQL error classes that clear on their own: connection exception, transaction
#: rollback (deadlock, serialization), insufficient resources (too many connections),
#: operator intervention (shutdown, starting up).
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57"})


def _is_transient(error: BaseException) -> bool:
    """A lost connection or a lock timeout, not a bad query or a missing table: worth
    retrying. SQLite raises OperationalError for both kinds, so its message decides."""
    cause = error.__cause__ if isinstance(error, optuna.exceptions.StorageInternalError) else error
    if isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated:
        return True
    if not isinstance(cause, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
        return False
    original = cause.orig
    if isinstance(original, sqlite3.Error):
        return any(word in str(original) for word in ("locked", "busy"))
    sqlstate = getattr(original, "sqlstate", None)  # psycopg's; None: no answer from a server
    return sqlstate is None or sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES


_Result = TypeVar("_Result")


def _with_retries(call: Callable[[], _Result], name: str) -> _Result:
    """`call()`, again with backoff while the database is unreachable, up to RECONNECT_SECONDS."""
    delay, give_up = RECONNECT_FIRST_DELAY, time.monotonic() + RECONNECT_SECONDS
    while True:
        try:
            return call()
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
            if not _is_transient(error) or time.monotonic() + delay > give_up:
                raise
            logger.warning(
                "storage unreachable in %s (%s); retrying in %.2g s",
                name,
                type(error).__name__,
                delay,
            )
            time.sleep(delay)
            delay = min(2 * delay, RECONNECT_MAX_DELAY)


def _retrying(method: _Method) -> _Method:
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return _with_retries(lambda: method(self, *args, **kwargs), method.__name__)

    return call  # type: ignore[return-value]


class ResilientRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose calls ride out a database restart, retrying with backoff, with
    a worker's per-trial reads and writes in fewer round trips (each costs CPU on both ends: a
    small machine's workers and database share its cores).

    Optuna raises at the first lost connection, which would fail a trial (or kill a worker)
    for a PostgreSQL restart of a few seconds. Every storage call is retried for up to
    RECONNECT_SECONDS; the first error on a dropped connection makes SQLAlchemy discard the
    pool's connections, so the retry runs on a fresh one. A retried write that had in fact
    committed is harmless: finished trials refuse updates, which the worker treats as done;
    a retried claim finds the trial its first attempt took by the claim's token.
    """

    def set_trial_user_attrs(self, trial_id: int, attributes: dict[str, Any]) -> None:
        """Several user attributes in one transaction of two statements.

        Optuna's ``set_trial_user_attr`` spends a transaction, a trial lookup and an upsert on
        each attribute; this looks the trial up once and upserts the rows in one executemany.
        The rows are the ones Optuna writes (key, JSON value), and a finished trial is refused
        the same way, with UpdateFinishedTrialError.
        """
        self._set_trial_attrs(models.TrialUserAttributeModel, trial_id, attributes)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._set_trial_attrs(models.TrialUserAttributeModel, trial_id, {key: value})

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._set_trial_attrs(models.TrialSystemAttributeModel, trial_id, {key: value})

    def _set_trial_attrs(self, model: Any, trial_id: int, attributes: dict[str, Any]) -> None:
        """Optuna's _set_trial_attr_without_commit for several attributes, with a statement
        built once instead of on every call (see _upsert)."""
        if not attributes:
            return
        with _create_scoped_session(self.scoped_session, True) as session:
            state = session.execute(_trial_state(), {"trial_id": trial_id}).scalar()
            if state is None:
                raise KeyError(models.NOT_FOUND_MSG)
            self.check_trial_is_updatable(trial_id, state)
            self._set_attrs_in(session, model, trial_id, attributes)

    def _set_attrs_in(
        self, session: Any, model: Any, trial_id: int, attributes: dict[str, Any]
    ) -> None:
        upsert = _upsert(self.engine.dialect.name, model.__tablename__)
        if upsert is None:  # another database: Optuna's own way, row by row
            for key, value in attributes.items():
                self._set_trial_attr_without_commit(session, model, trial_id, key, value)
            return
        rows = [
            {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
            for key, value in attributes.items()
        ]
        session.execute(upsert, rows)

    def claim_trial(
        self,
        study_id: int,
        budget: int | None,
        system_attrs: Callable[[int], dict[str, Any]] = lambda index: {},
    ) -> FrozenTrial | None:
        """A RUNNING trial for one worker, in one transaction: the study's oldest WAITING trial
        (a retry, or one enqueued by hand), else a new one while fewer than `budget` trials
        count against the budget; None when the budget is spent.

        A claim whose commit went through but whose answer was lost with the connection would,
        retried, take a second trial and leave the first RUNNING unrun, and a retry trial so
        left would never run (Optuna retries a trial once). So each claim writes a token with
        the trial (system attribute ``tuner:claim``), and a retried claim first looks for it.

        Retries of trials whose worker died and trials tuner adds beyond the search (system
        attributes `UNCOUNTED_KEYS`) do not count.
        A new trial's system attributes are ``system_attrs(index)``, index being how many
        trials counted before it. Its heartbeat is recorded in the same transaction (when
        heartbeats are on), so a worker that dies right after claiming leaves a trial that goes
        stale and is retried, never one left RUNNING for good.

        Exact across processes because it holds the lock Optuna's own trial creation takes,
        the study's row (``SELECT … FOR UPDATE``; SQLite: the write lock every transaction
        takes at BEGIN IMMEDIATE), from the count to the commit. Optuna's ``ask()`` creates a
        trial unconditionally, and has no count that leaves retries out: hence this SQL.
        """
        token = uuid.uuid4().hex
        attempts = 0

        def attempt() -> FrozenTrial | None:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and (taken := self._claimed_with(study_id, token)) is not None:
                return taken
            return self._claim(study_id, budget, system_attrs, token)

        return _with_retries(attempt, "claim_trial")

    def _claimed_with(self, study_id: int, token: str) -> FrozenTrial | None:
        """The study's trial an earlier attempt of a claim took, if its commit went through
        (a scan of the study's system attributes: only a retried claim pays it)."""
        attributes = models.TrialSystemAttributeModel
        with _create_scoped_session(self.scoped_session) as session:
            trial_id = session.execute(
                sqlalchemy.select(attributes.trial_id)
                .join(models.TrialModel)
                .where(
                    models.TrialModel.study_id == study_id,
                    attributes.key == CLAIM_TOKEN_KEY,
                    attributes.value_json == json.dumps(token),
                )
            ).scalar()
        return None if trial_id is None else self.get_trial(trial_id)

    def _claim(
        self,
        study_id: int,
        budget: int | None,
        system_attrs: Callable[[int], dict[str, Any]],
        token: str,
    ) -> FrozenTrial | None:
        """One attempt of `claim_trial`, in one transaction."""
        with _create_scoped_session(self.scoped_session) as session:
            if session.execute(_lock_study(), {"study_id": study_id}).first() is None:
                raise KeyError(models.NOT_FOUND_MSG)
            made, uncounted, waiting_id = session.execute(
                _claim_query(), {"study_id": study_id}
            ).one()
            if waiting_id is not None:
                trial = models.TrialModel.find_or_raise_by_id(waiting_id, session, for_update=True)
                if trial.state == TrialState.WAITING:  # a plain-Optuna ask() may have won it
                    trial.state = TrialState.RUNNING
                    trial.datetime_start = datetime.now()
                    self._set_attrs_in(
                        session,
                        models.TrialSystemAttributeModel,
                        trial.trial_id,
                        {CLAIM_TOKEN_KEY: token},
                    )
                    if self.heartbeat_interval is not None:
                        self._record_heartbeat(session, trial.trial_id)
                    session.flush()
                    session.expire(trial, ["system_attributes"])
                    return self._build_frozen_trial_from_trial_model(trial)
            index = made - uncounted
            if budget is not None and index >= budget:
                return None
            attrs = {**system_attrs(index), CLAIM_TOKEN_KEY: token}
            started = datetime.now()  # stored as naive UTC, as TrialModel stores it
            # Under the study's lock, the trials made so far are exactly those before this
            # one: its number is their count, as Optuna's count_past_trials() would make it.
            (trial_id,) = session.execute(
                _insert_trial(),
                {
                    "study_id": study_id,
                    "number": made,
                    "state": TrialState.RUNNING,
                    "datetime_start": started.astimezone(UTC).replace(tzinfo=None),
                },
            ).inserted_primary_key
            self._set_attrs_in(session, models.TrialSystemAttributeModel, trial_id, attrs)
            if self.heartbeat_interval is not None:
                self._record_heartbeat(session, trial_id)
            return FrozenTrial(
                number=made,
                state=TrialState.RUNNING,
                value=None,
                values=None,
                datetime_start=started,
                datetime_complete=None,
                params={},
                distributions={},
                user_attrs={},
                system_attrs=attrs,
                intermediate_values={},
                trial_id=trial_id,
            )

    def record_heartbeat(self, trial_id: int) -> None:
        """Optuna's heartbeat in one statement, an upsert of the trial's heartbeat row (Optuna
        reads the row, reads it again for update, asks the server the time, then writes)."""
        with _create_scoped_session(self.scoped_session, True) as session:
            self._record_heartbeat(session, trial_id)

    def _record_heartbeat(self, session: Any, trial_id: int) -> None:
        """Record the trial's heartbeat, the server's time, in the session's transaction."""
        upsert = _upsert(self.engine.dialect.name, "trial_heartbeats")
        if upsert is not None:
            session.execute(upsert, {"trial_id": trial_id})
            return
        now = sqlalchemy.func.current_timestamp()
        heartbeat = models.TrialHeartbeatModel.where_trial_id(trial_id, session, True)
        if heartbeat is None:
            session.add(models.TrialHeartbeatModel(trial_id=trial_id, heartbeat=now))
        else:
            heartbeat.heartbeat = now

    def get_trial(self, trial_id: int) -> FrozenTrial:
        """Optuna's get_trial in one statement instead of six (see _trials_query)."""
        with _create_scoped_session(self.scoped_session) as session:
            rows = session.execute(_trial_by_id(), {"trial_id": trial_id}).all()
        if not rows:
            raise KeyError(models.NOT_FOUND_MSG)
        return _build_trials(rows)[0]

    def _get_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        """Optuna's read of a study's trials (all, or the refresh of Optuna's trial cache: the
        unfinished trials it holds and every trial after the last finished one) in two
        statements instead of seven: the trials, then their rows (see _trials_query; one more
        statement for each further _MAX_TRIAL_IDS trials)."""
        included = [i for i in included_trial_ids if i <= trial_id_greater_than]
        parameters: dict[str, Any] = {"study_id": study_id, "after": trial_id_greater_than}
        if states is not None:
            parameters["states"] = list(states)  # type: ignore[call-overload]
        if included:
            parameters["included"] = included
        query = _trials_of_study(states is not None, bool(included), trial_id_greater_than > -1)
        with _create_scoped_session(self.scoped_session) as session:
            rows = session.execute(query, parameters).all()
            if not rows:  # none, or no such study: Optuna raises KeyError for the latter
                models.StudyModel.find_or_raise_by_id(study_id, session)
                return []
            ids = [row.trial_id for row in rows]
            for start in range(0, len(ids), _MAX_TRIAL_IDS):
                chunk = ids[start : start + _MAX_TRIAL_IDS]
                rows += session.execute(_rows_of_trials(), {"ids": chunk}).all()
        return _build_trials(rows)


@functools.cache
def _claim_query() -> sqlalchemy.Select:
    """How many trials the study ``study_id`` has, how many of them the budget does not count
    (`UNCOUNTED_KEYS`), and its oldest WAITING trial, in one pass over its trials
    (hand-written: Optuna offers none of the three). An uncounted trial is found by index
    probes per trial, in the select list so that the database cannot turn it into a scan of
    every study's system attributes."""
    trials = models.TrialModel.__table__
    attributes = models.TrialSystemAttributeModel.__table__
    uncounted = sqlalchemy.exists().where(
        attributes.c.trial_id == trials.c.trial_id, attributes.c.key.in_(UNCOUNTED_KEYS)
    )
    waiting = sqlalchemy.case((trials.c.state == TrialState.WAITING, trials.c.trial_id))
    return sqlalchemy.select(
        sqlalchemy.func.count(),
        sqlalchemy.func.coalesce(sqlalchemy.func.sum(sqlalchemy.case((uncounted, 1), else_=0)), 0),
        sqlalchemy.func.min(waiting),
    ).where(trials.c.study_id == sqlalchemy.bindparam("study_id"))


#: Trials whose rows one statement reads at most: the IN list of their ids, bound once per
#: table, must stay within what the driver binds (SQLite: 32766 variables).
_MAX_TRIAL_IDS = 1000


def _build_trials(rows: list[Any]) -> list[FrozenTrial]:
    """Trials from the rows `_trials_query` selects, built as Optuna's RDBStorage builds them
    (_build_frozen_trial_from_trial_model), ordered by trial id."""
    trials: dict[int, Any] = {}
    parts: dict[int, tuple[list, dict, dict, dict, dict]] = {}
    for row in rows:
        params, values, intermediate, user_attrs, system_attrs = parts.setdefault(
            row.trial_id, ([], {}, {}, {}, {})
        )
        if row.kind == 0:
            trials[row.trial_id] = row
        elif row.kind == 1:
            params.append((row.ord, row.key, row.number, row.text))
        elif row.kind == 2:
            kind = models.TrialValueModel.TrialValueType[row.name]
            values[row.ord] = models.TrialValueModel.stored_repr_to_value(row.number, kind)
        elif row.kind == 3:
            model = models.TrialIntermediateValueModel
            kind = model.TrialIntermediateValueType[row.name]
            intermediate[row.ord] = model.stored_repr_to_intermediate_value(row.number, kind)
        else:
            (user_attrs if row.kind == 4 else system_attrs)[row.key] = json.loads(row.text)
    built = []
    for trial_id in sorted(trials):
        trial = trials[trial_id]
        params, values, intermediate, user_attrs, system_attrs = parts[trial_id]
        params.sort()  # by param_id, as Optuna orders them
        distributions = {name: json_to_distribution(text) for _, name, _, text in params}
        built.append(
            FrozenTrial(
                number=trial.ord,
                state=TrialState[trial.name],
                value=None,
                values=[values[objective] for objective in range(len(values))] or None,
                datetime_start=_local_time(trial.start),
                datetime_complete=_local_time(trial.complete),
                params={
                    name: distributions[name].to_external_repr(value)
                    for _, name, value, _ in params
                },
                distributions=distributions,
                user_attrs=user_attrs,
                system_attrs=system_attrs,
                intermediate_values=intermediate,
                trial_id=trial_id,
            )
        )
    return built


def _local_time(utc: datetime | None) -> datetime | None:
    """A stored naive UTC time as naive local time, as Optuna's TrialModel converts it."""
    if utc is None:
        return None
    return utc.replace(tzinfo=UTC).astimezone().replace(tzinfo=None)


def _trials_query(trial_rows: Any | None, of_trials: Callable[[Any], Any]) -> Any:
    """One UNION ALL of the rows making trials: `trial_rows` (from `_trial_rows`), unless
    None, and a row per param, value, intermediate value, user and system attribute (kinds
    1-5) of the trials that `of_trials(<the table's trial_id column>)` selects.

    Hand-written SQL on Optuna's schema because reading trials is the costliest thing a
    worker does, and Optuna spends a statement per table on it (its ORM's select-in loads):
    samplers refresh the study's unfinished trials several times a trial, and tell() reads
    the trial twice. The rows are selected by trial id, so the database uses the tables'
    (trial_id, …) indexes, as it does for Optuna's IN lists.
    """
    p, v, i, u, s = (
        model.__table__
        for model in (
            models.TrialParamModel,
            models.TrialValueModel,
            models.TrialIntermediateValueModel,
            models.TrialUserAttributeModel,
            models.TrialSystemAttributeModel,
        )
    )
    parts = [] if trial_rows is None else [trial_rows]
    parts += [
        _rows(
            p,
            1,
            p.c.param_id,
            of_trials,
            key=p.c.param_name,
            number=p.c.param_value,
            text=p.c.distribution_json,
        ),
        _rows(v, 2, v.c.objective, of_trials, number=v.c.value, name=_enum_name(v.c.value_type)),
        _rows(
            i,
            3,
            i.c.step,
            of_trials,
            number=i.c.intermediate_value,
            name=_enum_name(i.c.intermediate_value_type),
        ),
        _rows(u, 4, u.c.trial_user_attribute_id, of_trials, key=u.c.key, text=u.c.value_json),
        _rows(s, 5, s.c.trial_system_attribute_id, of_trials, key=s.c.key, text=s.c.value_json),
    ]
    return sqlalchemy.union_all(*parts)


def _trial_rows(where: Any) -> Any:
    """The row (kind 0) of each trial `where` selects: number, state, start and end."""
    table = models.TrialModel.__table__
    return _rows(
        table,
        0,
        table.c.number,
        lambda _: where,
        name=_enum_name(table.c.state),
        start=table.c.datetime_start,
        complete=table.c.datetime_complete,
    )


def _rows(
    table: Any, kind: int, order: Any, of_trials: Callable[[Any], Any], **columns: Any
) -> Any:
    """SELECT trial_id, kind, ord, key, number, text, name, start, complete FROM `table`:
    the columns of every part of `_trials_query`, NULL where `columns` names none."""
    null = {
        name: sqlalchemy.cast(sqlalchemy.null(), kind)
        for name, kind in (
            ("key", sqlalchemy.String),
            ("number", sqlalchemy.Float),
            ("text", sqlalchemy.String),
            ("name", sqlalchemy.String),
            ("start", sqlalchemy.DateTime),
            ("complete", sqlalchemy.DateTime),
        )
    }
    return sqlalchemy.select(
        table.c.trial_id,
        sqlalchemy.literal(kind, sqlalchemy.Integer).label("kind"),
        order.label("ord"),
        *(value.label(name) for name, value in (null | columns).items()),
    ).where(of_trials(table.c.trial_id))


def _enum_name(enum_column: Any) -> Any:
    """An enum column as its members' names (text: UNION ALL needs one type per column)."""
    return sqlalchemy.cast(enum_column, sqlalchemy.String)


@functools.cache
def _trial_by_id() -> Any:
    """A trial and its rows, by id (parameter ``trial_id``)."""
    trial_id = sqlalchemy.bindparam("trial_id")
    selects = models.TrialModel.__table__.c.trial_id == trial_id
    return _trials_query(_trial_rows(selects), lambda column: column == trial_id)


@functools.cache
def _rows_of_trials() -> Any:
    """The rows of the trials whose ids are in ``ids``, but their trial rows."""
    ids = sqlalchemy.bindparam("ids", expanding=True)
    return _trials_query(None, lambda column: column.in_(ids))


@functools.cache
def _trials_of_study(states: bool, included: bool, after: bool) -> Any:
    """The trial rows of a study (parameter ``study_id``): those in ``states`` if `states`;
    those in ``included`` or after trial id ``after`` if `included` and `after`, else those
    after ``after`` if `after` (the filters of RDBStorage._get_trials)."""
    table = models.TrialModel.__table__
    where = [table.c.study_id == sqlalchemy.bindparam("study_id")]
    if states:
        where.append(table.c.state.in_(sqlalchemy.bindparam("states", expanding=True)))
    later = table.c.trial_id > sqlalchemy.bindparam("after")
    if included and after:
        ids = table.c.trial_id.in_(sqlalchemy.bindparam("included", expanding=True))
        where.append(sqlalchemy.or_(ids, later))
    elif after:
        where.append(later)
    return _trial_rows(sqlalchemy.and_(*where))


@functools.cache
def _lock_study() -> Any:
    """Lock the study ``study_id``'s row, as Optuna's trial creation does (FOR UPDATE)."""
    table = models.StudyModel.__table__
    study_id = sqlalchemy.bindparam("study_id")
    return sqlalchemy.select(table.c.study_id).where(table.c.study_id == study_id).with_for_update()


@functools.cache
def _insert_trial() -> Any:
    """Insert a trial (number, study_id, state, datetime_start); its id comes back as the
    result's inserted_primary_key (RETURNING where the database has it)."""
    table = models.TrialModel.__table__
    columns = ("number", "study_id", "state", "datetime_start")
    values = {name: sqlalchemy.bindparam(name, type_=table.c[name].type) for name in columns}
    return table.insert().values(values)


@functools.cache
def _trial_state() -> Any:
    """A trial's state, by id (parameter ``trial_id``): what Optuna loads a whole ORM object
    for before each write."""
    table = models.TrialModel.__table__
    return sqlalchemy.select(table.c.state).where(
        table.c.trial_id == sqlalchemy.bindparam("trial_id")
    )


@functools.cache
def _upsert(dialect: str, table_name: str) -> Any:
    """INSERT … ON CONFLICT/DUPLICATE KEY UPDATE of a trial's user or system attribute
    (parameters trial_id, key, value_json; several rows at once as an executemany) or heartbeat
    (parameter trial_id; the time is the server's), keyed as Optuna keys them; None on a
    database without such a statement, where Optuna's row-by-row way is used instead.
    Built once: building a statement costs more client CPU than running it."""
    table = models.BaseModel.metadata.tables[table_name]
    if table_name == "trial_heartbeats":
        keys, value = ["trial_id"], "heartbeat"
        values = {"trial_id": sqlalchemy.bindparam("trial_id"), value: sqlalchemy.func.now()}
    else:
        keys, value = ["trial_id", "key"], "value_json"
        values = {name: sqlalchemy.bindparam(name) for name in ("trial_id", "key", value)}
    if dialect == "postgresql" or (dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 24)):
        statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
        statement = statement.values(values)
        return statement.on_conflict_do_update(
            index_elements=keys, set_={value: getattr(statement.excluded, value)}
        )
    if dialect == "mysql":
        statement = mysql.insert(table).values(values)
        return statement.on_duplicate_key_update({value: getattr(statement.inserted, value)})
    return None


for _name in [
    *(name for name in dir(optuna.storages.BaseStorage) if not name.startswith("_")),
    "set_trial_user_attrs",
    "record_heartbeat",
    "_get_stale_trial_ids",
    # What Optuna's trial cache calls on the storage directly, bypassing the public methods:
    "_get_trials",
    "_set_trial_param",
    "_create_new_trial",
]:
    if _name not in ("check_trial_is_updatable", "remove_session"):
        setattr(ResilientRDBStorage, _name, _retrying(getattr(ResilientRDBStorage, _name)))


def user_data_dir() -> Path:
    """tuner's folder in the user's data folder: ``$XDG_DATA_HOME/tuner``, else
    ``~/.local/share/tuner``."""
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "tuner"


def default_storage_path() -> Path:
    """``studies.db`` in `user_data_dir`: every project on the machine finds the same studies."""
    return user_data_dir() / "studies.db"


def resolve_storage_url(explicit: str | None = None, from_spec: str | None = None) -> str:
    """The storage URL from the argument, the spec, ``TUNER_STORAGE``, or the default file.

    A bare path (no ``://``) means a SQLite file.
    """
    url = explicit or from_spec or os.environ.get("TUNER_STORAGE")
    if not url:
        return f"sqlite:///{default_storage_path()}"
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    return url


def rdb_backend(storage: optuna.storages.BaseStorage) -> ResilientRDBStorage:
    """Our RDBStorage under the cache layer Optuna wraps it in when a study loads it."""
    return getattr(storage, "_backend", storage)


def _prepare_sqlite(url: sqlalchemy.URL) -> dict:
    """Create the folder and switch the file to WAL, so readers never block the writer."""
    if not url.database or url.database == ":memory:":
        return {}
    path = Path(url.database)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
    # isolation_level=None: pysqlite stops opening transactions behind SQLAlchemy's back;
    # _serialize_sqlite_writers then opens each one itself.
    return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT, "isolation_level": None}}


def _serialize_sqlite_writers(engine: sqlalchemy.Engine) -> None:
    """Start every transaction with BEGIN IMMEDIATE (SQLAlchemy's pysqlite recipe).

    pysqlite would otherwise run Optuna's ``SELECT … FOR UPDATE`` outside any transaction
    (SQLite has no row locks), and two workers could both claim the same WAITING trial.
    Taking the write lock at BEGIN makes each claim atomic; the busy timeout makes the others
    wait for it instead of failing with "database is locked".
    """
    sqlalchemy.event.listen(
        engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE")
    )
    engine.dispose()  # connections opened before the listener would miss it


@functools.cache
def open_storage(
    url: str, *, heartbeat: tuple[int, int] | None = None
) -> optuna.storages.RDBStorage:
    """Open (creating if needed) the study database at `url`; one storage per URL a process.

    The storage is cached: each holds a connection pool, and a process that opened one per
    call (a polling loop, repeated best_config() calls) would exhaust PostgreSQL's
    connections. RDBStorage is thread-safe, so sharing it is safe.

    Args:
        url: a SQLAlchemy URL (``sqlite:///…``, ``postgresql+psycopg://…``), or a libpq one
            (several hosts, an unescaped ``@`` in the password: see tuner.storage_urls).
        heartbeat: (interval, grace) in seconds, for workers: Optuna's trial heartbeats are
            recorded every interval, and a trial silent for longer than grace becomes FAIL and
            is retried once with the same parameters.

    Raises:
        StorageError: the URL is malformed or the database cannot be reached.
    """
    masked = mask_url(url)
    url = sqlalchemy_url(url)
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):  # ValueError: a port that is no number
        raise StorageError(
            f"storage {masked!r} is not a database URL; expected e.g. sqlite:///path/studies.db "
            "or postgresql+psycopg://user@host/db"
        ) from None
    # No pre-ping: it costs a round trip per transaction (about 17 a trial). A connection the
    # server dropped fails its first statement instead; SQLAlchemy then discards the pool's
    # connections, and ResilientRDBStorage's retry runs the call again on a fresh one.
    engine_kwargs = {"pool_pre_ping": False}
    if parsed.get_backend_name() == "sqlite":
        try:
            engine_kwargs |= _prepare_sqlite(parsed)
        except (OSError, sqlite3.Error) as error:
            raise StorageError(f"cannot open SQLite storage {masked}: {error}") from None
    heartbeat_kwargs = {}
    if heartbeat:
        heartbeat_kwargs = {
            "heartbeat_interval": heartbeat[0],
            "grace_period": heartbeat[1],
            "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=1
            ),
        }
    try:
        storage = ResilientRDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat_kwargs)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise StorageError(
            f"cannot reach storage {masked}: {reason}. Check that the database server is "
            "running and the URL is right, or pass another with --storage / TUNER_STORAGE."
        ) from None
    if parsed.get_backend_name() == "sqlite":
        _serialize_sqlite_writers(storage.engine)
    return storage
