"""Where studies live: storage URL resolution and Optuna's RDBStorage, faster and retrying.

One URL names the study database: the argument, else the spec's ``[execution] storage``, else
``TUNER_STORAGE``, else one SQLite file in the user's data folder, so every project on the
machine finds the same studies. Optuna's schema is used as it is, so optuna-dashboard and the
``optuna`` CLI read our studies. Two layers over Optuna's RDBStorage: FastRDBStorage does a
worker's per-trial reads and writes in fewer statements; RetryingRDBStorage retries every
call while the database is unreachable, and knows since when it has been.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Container, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.distributions import json_to_distribution
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import make_url

from tuner.errors import StorageError, StorageUnreachableError
from tuner.storage import optuna_internals as internals
from tuner.storage.urls import mask_url, sqlalchemy_url, sqlite_file

#: Seconds a SQLite writer waits for a lock before failing; long, because optuna-dashboard's
#: polling and several workers share one file (optuna-dashboard issue 545).
SQLITE_BUSY_TIMEOUT = 60
#: How long storage calls keep retrying while the database is unreachable (a PostgreSQL
#: restart, a failover, a SQLite writer holding the lock), counted from the first call that
#: found it so; and the first and longest waits between tries.
RECONNECT_SECONDS = 120.0
RECONNECT_FIRST_DELAY = 0.25
RECONNECT_MAX_DELAY = 8.0

#: The system attribute naming the claim that took a trial (see claim_trial).
CLAIM_TOKEN_KEY = "tuner:claim"
#: The system attribute of a trial stopped for no fault of its own (Ctrl-C, its worker
#: cancelled, the database gone): it is re-run (tuner.study.lifecycle.interrupt), and only
#: the re-run counts against the budget.
INTERRUPTED_KEY = "tuner:interrupted"
#: System attributes that keep a trial out of the trial budget's count: a retry of a trial
#: whose worker died (Optuna's ``failed_trial``), an interrupted trial, and trials tuner adds
#: beyond the search (warm-start copies, confirmation runs: tuner.study.warm_start,
#: tuner.study.confirmation).
OUTSIDE_BUDGET_KEY = "tuner:outside_budget"
UNCOUNTED_KEYS = ("failed_trial", INTERRUPTED_KEY, OUTSIDE_BUDGET_KEY)

logger = logging.getLogger(__name__)


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


class FastRDBStorage(internals.RDBStorageHooks):
    """Optuna's RDBStorage with a worker's per-trial reads and writes in fewer round trips
    (each costs CPU on both ends: a small machine's workers and database share its cores),
    a budgeted claim of trials, and trials failed with their reason in one transaction.
    Each method here makes one attempt; RetryingRDBStorage retries them."""

    def set_trial_attrs(
        self,
        trial_id: int,
        user_attrs: dict[str, Any],
        system_attrs: dict[str, Any] | None = None,
    ) -> None:
        """A trial's user and system attributes in one transaction of a few statements.

        Optuna's ``set_trial_user_attr`` spends a transaction, a trial lookup and an upsert on
        each attribute (and ``Trial.set_constraint`` a read before its own); this looks the
        trial up once and upserts each table's rows in one executemany. The rows are the ones
        Optuna writes (key, JSON value), and a finished trial is refused the same way, with
        UpdateFinishedTrialError.
        """
        with internals.session(self) as session:
            state = session.execute(_trial_state(), {"trial_id": trial_id}).scalar()
            if state is None:
                raise KeyError(f"no trial with id {trial_id}")
            self.check_trial_is_updatable(trial_id, state)
            self._set_attrs_in(session, False, trial_id, user_attrs)
            self._set_attrs_in(session, True, trial_id, system_attrs or {})

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.set_trial_attrs(trial_id, {key: value})

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.set_trial_attrs(trial_id, {}, {key: value})

    def _set_attrs_in(
        self, session: Any, system: bool, trial_id: int, attributes: dict[str, Any]
    ) -> None:
        """Optuna's _set_trial_attr_without_commit for several attributes, with a statement
        built once instead of on every call (see _upsert)."""
        if not attributes:
            return
        name = "trial_system_attributes" if system else "trial_user_attributes"
        upsert = _upsert(self.engine.dialect.name, name)
        if upsert is None:  # another database: Optuna's own way, row by row
            for key, value in attributes.items():
                internals.set_trial_attr_in(self, session, system, trial_id, key, value)
            return
        rows = [
            {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
            for key, value in attributes.items()
        ]
        session.execute(upsert, rows)

    def fail_trial(
        self, trial_id: int, reason: str, system_attrs: dict[str, Any] | None = None
    ) -> bool:
        """Fail a RUNNING trial with its ``fail_reason`` (and `system_attrs`) in one
        transaction; False, writing nothing, when the trial had already finished."""
        with internals.session(self) as session:
            failed = session.execute(
                _change_state(TrialState.RUNNING, TrialState.FAIL, "datetime_complete"),
                {"id": trial_id, "at": internals.time_to_store(datetime.now())},
            ).rowcount
            if failed:
                self._set_attrs_in(session, False, trial_id, {"fail_reason": reason})
                self._set_attrs_in(session, True, trial_id, system_attrs or {})
        return bool(failed)

    def claim_trial(
        self,
        study_id: int,
        budget: int | None,
        system_attrs: Callable[[int], dict[str, Any]],
        token: str,
        user_attrs: dict[str, Any] | None = None,
    ) -> FrozenTrial | None:
        """A RUNNING trial for one worker, in one transaction: the study's oldest WAITING trial
        (a retry or a re-run, or one enqueued by hand), else a new one while fewer than
        `budget` trials count against the budget; None when the budget is spent.

        Retries of trials whose worker died, interrupted trials (re-run as a WAITING trial,
        which counts) and trials tuner adds beyond the search (system attributes
        `UNCOUNTED_KEYS`) do not count.
        A new trial's system attributes are ``system_attrs(index)``, index being how many
        trials counted before it; every claimed trial gets ``tuner:claim`` = `token` (see
        RetryingRDBStorage.claim_trial) and `user_attrs` (who claimed it). Its heartbeat is
        recorded in the same transaction (when heartbeats are on), so a worker that dies right
        after claiming leaves a trial that goes stale and is retried, never one left RUNNING.

        Exact across processes because it holds the lock Optuna's own trial creation takes,
        the study's row (``SELECT … FOR UPDATE``; SQLite: the write lock every transaction
        takes at BEGIN IMMEDIATE), from the count to the commit. Optuna's ``ask()`` creates a
        trial unconditionally, and has no count that leaves retries out: hence this SQL.
        """
        with internals.session(self) as session:
            if session.execute(_lock_study(), {"study_id": study_id}).first() is None:
                raise KeyError(f"no study with id {study_id}")
            made, uncounted, waiting_id = session.execute(
                _claim_query(), {"study_id": study_id}
            ).one()
            now = datetime.now()
            if waiting_id is not None:
                # A plain-Optuna ask() may have taken it first: then it is no longer WAITING.
                taken = session.execute(
                    _change_state(TrialState.WAITING, TrialState.RUNNING, "datetime_start"),
                    {"id": waiting_id, "at": internals.time_to_store(now)},
                ).rowcount
                if taken:
                    self._set_attrs_in(session, True, waiting_id, {CLAIM_TOKEN_KEY: token})
                    self._set_attrs_in(session, False, waiting_id, user_attrs or {})
                    if self.heartbeat_interval is not None:
                        self._record_heartbeat(session, waiting_id)
                    rows = session.execute(_trial_by_id(), {"trial_id": waiting_id}).all()
                    return _build_trials(rows)[0]
            index = made - uncounted
            if budget is not None and index >= budget:
                return None
            attrs = {**system_attrs(index), CLAIM_TOKEN_KEY: token}
            # Under the study's lock, the trials made so far are exactly those before this
            # one: its number is their count, as Optuna's count_past_trials() would make it.
            (trial_id,) = session.execute(
                _insert_trial(),
                {
                    "study_id": study_id,
                    "number": made,
                    "state": TrialState.RUNNING,
                    "datetime_start": internals.time_to_store(now),
                },
            ).inserted_primary_key
            self._set_attrs_in(session, True, trial_id, attrs)
            self._set_attrs_in(session, False, trial_id, user_attrs or {})
            if self.heartbeat_interval is not None:
                self._record_heartbeat(session, trial_id)
            return FrozenTrial(
                number=made,
                state=TrialState.RUNNING,
                value=None,
                values=None,
                datetime_start=now,
                datetime_complete=None,
                params={},
                distributions={},
                user_attrs=dict(user_attrs or {}),
                system_attrs=attrs,
                intermediate_values={},
                trial_id=trial_id,
            )

    def claimed_with(self, study_id: int, token: str) -> FrozenTrial | None:
        """The study's trial that a claim with `token` took, if its commit went through (a
        scan of the study's system attributes: only a retried claim pays it)."""
        trials, attributes = internals.table("trials"), internals.table("trial_system_attributes")
        with internals.session(self) as session:
            trial_id = session.execute(
                sqlalchemy.select(attributes.c.trial_id)
                .join(trials, trials.c.trial_id == attributes.c.trial_id)
                .where(
                    trials.c.study_id == study_id,
                    attributes.c.key == CLAIM_TOKEN_KEY,
                    attributes.c.value_json == json.dumps(token),
                )
            ).scalar()
        return None if trial_id is None else self.get_trial(trial_id)

    def record_heartbeat(self, trial_id: int) -> None:
        """Optuna's heartbeat in one statement, an upsert of the trial's heartbeat row (Optuna
        reads the row, reads it again for update, asks the server the time, then writes)."""
        with internals.session(self) as session:
            self._record_heartbeat(session, trial_id)

    def _record_heartbeat(self, session: Any, trial_id: int) -> None:
        """Record the trial's heartbeat, the server's time, in the session's transaction."""
        upsert = _upsert(self.engine.dialect.name, "trial_heartbeats")
        if upsert is None:
            internals.record_heartbeat_in(session, trial_id)
        else:
            session.execute(upsert, {"trial_id": trial_id})

    def silences(self, study_id: int) -> dict[int, float]:
        """Seconds since the last heartbeat of each RUNNING trial of the study that has one,
        by the database server's clock (the clock that wrote the heartbeats)."""
        with internals.session(self) as session:
            now = session.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
            rows = session.execute(_heartbeats_of_running(), {"study_id": study_id}).all()
        # As Optuna compares them: PostgreSQL answers now() with a time zone, and stores the
        # heartbeat without one in the same session time zone.
        now = now.replace(tzinfo=None)
        return {row.trial_id: (now - row.heartbeat).total_seconds() for row in rows}

    def get_trial(self, trial_id: int) -> FrozenTrial:
        """Optuna's get_trial in one statement instead of six (see _trials_query)."""
        with internals.session(self) as session:
            rows = session.execute(_trial_by_id(), {"trial_id": trial_id}).all()
        if not rows:
            raise KeyError(f"no trial with id {trial_id}")
        return _build_trials(rows)[0]

    def read_trials(
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
        with internals.session(self) as session:
            rows = session.execute(query, parameters).all()
            if not rows:  # none, or no such study: Optuna raises KeyError for the latter
                if session.execute(_lock_study(False), {"study_id": study_id}).first() is None:
                    raise KeyError(f"no study with id {study_id}")
                return []
            ids = [row.trial_id for row in rows]
            for start in range(0, len(ids), _MAX_TRIAL_IDS):
                chunk = ids[start : start + _MAX_TRIAL_IDS]
                rows += session.execute(_rows_of_trials(), {"ids": chunk}).all()
        return _build_trials(rows)


_Result = TypeVar("_Result")
_DATABASE_ERRORS = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)
_Method = TypeVar("_Method", bound=Callable[..., Any])


def _retried(method: _Method) -> _Method:
    """`method`, run by RetryingRDBStorage._with_retries."""

    @functools.wraps(method)
    def call(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self._with_retries(lambda: method(self, *args, **kwargs), method.__name__)

    return call  # type: ignore[return-value]


class RetryingRDBStorage(FastRDBStorage):
    """FastRDBStorage whose every call rides out a database that is unreachable for a while,
    retrying with backoff, and which then says since when it has been unreachable.

    Optuna raises at the first lost connection, which would fail a trial (or kill a worker)
    for a PostgreSQL restart of a few seconds. Every call below is retried while the database
    has been unreachable for less than `reconnect_seconds`, counted from the first call that
    found it so (calls made during an outage, from any thread, share that clock); past that
    they raise StorageUnreachableError at once. The first error on a dropped connection makes
    SQLAlchemy discard the pool's connections, so the retry runs on a fresh one. A retried
    write that had in fact committed is harmless: finished trials refuse updates, which the
    worker treats as done; a retried claim finds the trial its first attempt took by the
    claim's token.

    The storage also knows how long it has been in contact with the database (since it was
    opened, or since the database came back): see stale_silences for why that matters.
    """

    def __init__(
        self, url: str, *, reconnect_seconds: float = RECONNECT_SECONDS, **kwargs: Any
    ) -> None:
        super().__init__(url, **kwargs)
        self.reconnect_seconds = reconnect_seconds
        self._contact_lock = threading.Lock()
        self._in_contact_since: float | None = time.monotonic()
        self._unreachable_since: tuple[float, datetime] | None = None  # monotonic, wall clock
        self._just_claimed: FrozenTrial | None = None  # see get_trial
        self._attrs_for_tell: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}

    def _with_retries(self, call: Callable[[], _Result], name: str) -> _Result:
        """`call()`, again with backoff while the database is unreachable, up to the window."""
        delay = RECONNECT_FIRST_DELAY
        # A heartbeat is retried at least as often as it is beaten, so a worker's beat gets
        # through within one interval of the database's return (see stale_silences).
        longest = min(RECONNECT_MAX_DELAY, self.heartbeat_interval or RECONNECT_MAX_DELAY)
        while True:
            try:
                result = call()
            except (
                sqlalchemy.exc.SQLAlchemyError,
                optuna.exceptions.StorageInternalError,
            ) as error:
                if not _is_transient(error):
                    self._heard_from_database()
                    raise
                since, since_wall = self._lost_contact(name, error)
                if time.monotonic() + delay > since + self.reconnect_seconds:
                    raise StorageUnreachableError(mask_url(self.url), since_wall) from error
                time.sleep(delay)
                delay = min(2 * delay, longest)
            except optuna.exceptions.UpdateFinishedTrialError:
                self._heard_from_database()  # the database answered: the trial is finished
                raise
            else:
                self._heard_from_database()
                return result

    def _lost_contact(self, name: str, error: BaseException) -> tuple[float, datetime]:
        """Note that a call found the database unreachable; when it has been since (monotonic
        and wall clock). Said once an outage, not once a try."""
        with self._contact_lock:
            self._in_contact_since = None
            if self._unreachable_since is None:
                self._unreachable_since = (time.monotonic(), datetime.now(UTC))
                logger.warning(
                    "storage %s unreachable in %s (%s); retrying for up to %.0f s",
                    mask_url(self.url),
                    name,
                    type(error).__name__,
                    self.reconnect_seconds,
                )
            return self._unreachable_since

    def _heard_from_database(self) -> None:
        """Note that the database answered (the outage, if any, is over)."""
        with self._contact_lock:
            if self._unreachable_since is not None:
                logger.warning(
                    "storage %s reachable again after %.0f s",
                    mask_url(self.url),
                    time.monotonic() - self._unreachable_since[0],
                )
            self._unreachable_since = None
            if self._in_contact_since is None:
                self._in_contact_since = time.monotonic()

    def seconds_in_contact(self) -> float:
        """How long this storage has reached the database without a break: since it was
        opened, or since the database came back; 0 while it is unreachable."""
        with self._contact_lock:
            since = self._in_contact_since
        return 0.0 if since is None else time.monotonic() - since

    def abandoned_after(self) -> float:
        """Seconds of silence after which a RUNNING trial has no live worker behind it, under
        any outage: a worker tries to beat every interval, and stops once its database has
        been unreachable for the retry window (see tuner.execution.worker); one more interval
        covers the worker's way from giving up to stopping."""
        return self.reconnect_seconds + 2 * (self.heartbeat_interval or 0)

    def stale_silences(self, study_id: int) -> dict[int, float]:
        """The study's RUNNING trials that no live worker is behind, with the seconds each has
        been silent (since its last heartbeat).

        Optuna calls a trial stale when its heartbeat is older than the grace period. But
        while the database is unreachable no worker can beat, and a sweeper that judged by
        the heartbeats alone would fail every healthy trial the moment the database came back
        from an outage longer than grace. Time the database was unreachable is nobody's
        silence; so the sweeper counts only silence it could have heard, and a trial is stale
        when it has been silent for longer than grace while this storage has been in contact
        with the database for longer than grace too (since it was opened, or since the
        database came back). A worker's beat, retried at least once an interval (see
        _with_retries), gets through within an interval of the database's return, and grace
        is longer than an interval.

        One kind of trial is stale at once, whatever this storage has seen: one silent for
        longer than abandoned_after(), whose worker has stopped (or died) for sure. That is
        how the next process to open a study resolves the trials of a worker that outlived
        its retry window and could not mark them.
        """
        if self.heartbeat_interval is None:
            return {}
        silences = self.silences(study_id)
        grace = self.grace_period or 2 * self.heartbeat_interval
        heard = self.seconds_in_contact() > grace
        abandoned = self.abandoned_after()
        return {
            trial_id: silent
            for trial_id, silent in silences.items()
            if silent > abandoned or (heard and silent > grace)
        }

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """The ids of stale_silences, for Optuna's own sweep (fail_stale_trials)."""
        return list(self.stale_silences(study_id))

    def assume_unreachable_since(self, since: datetime) -> None:
        """Take another process's word that the database has been unreachable since `since`
        (a worker's StorageUnreachableError): calls made now try once, not for a new window."""
        with self._contact_lock:
            self._in_contact_since = None
            ago = (datetime.now(UTC) - since).total_seconds()
            self._unreachable_since = (time.monotonic() - ago, since)

    def claim_trial(
        self,
        study_id: int,
        budget: int | None,
        system_attrs: Callable[[int], dict[str, Any]] = lambda index: {},
        user_attrs: dict[str, Any] | None = None,
    ) -> FrozenTrial | None:
        """FastRDBStorage.claim_trial, retried, taking one trial however many tries it takes.

        A claim whose commit went through but whose answer was lost with the connection would,
        retried, take a second trial and leave the first RUNNING unrun, and a retry trial so
        left would never run (Optuna retries a trial once). So each claim writes a token with
        the trial, and a retried claim first looks for it.
        """
        token = uuid.uuid4().hex
        attempts = 0

        def attempt() -> FrozenTrial | None:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and (taken := self.claimed_with(study_id, token)) is not None:
                return taken
            return FastRDBStorage.claim_trial(
                self, study_id, budget, system_attrs, token, user_attrs
            )

        claimed = self._with_retries(attempt, "claim_trial")
        self._just_claimed = copy.deepcopy(claimed)
        return claimed

    @contextlib.contextmanager
    def attrs_with_tell(
        self, trial_id: int, user_attrs: dict[str, Any], system_attrs: dict[str, Any]
    ) -> Iterator[None]:
        """Inside the block, the trial's next state change (the tell in it) writes these
        attributes in its own transaction: a finished trial's attributes and state land
        together, in one commit instead of two. If the block ends without one (the tell
        refused: the trial was finished elsewhere), they are dropped, as a finished trial
        would have refused them."""
        self._attrs_for_tell[trial_id] = (user_attrs, system_attrs)
        try:
            yield
        finally:
            self._attrs_for_tell.pop(trial_id, None)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        """Optuna's, retried, with the attributes `attrs_with_tell` holds for the trial in
        the same transaction: Optuna's own session is this thread's scoped session, which the
        attributes are written in first, so its commit is theirs too."""
        attributes = self._attrs_for_tell.pop(trial_id, None)

        def attempt() -> bool:
            if attributes is None:
                return FastRDBStorage.set_trial_state_values(self, trial_id, state, values)
            with internals.session(self) as session:
                self._set_attrs_in(session, False, trial_id, attributes[0])
                self._set_attrs_in(session, True, trial_id, attributes[1])
                return FastRDBStorage.set_trial_state_values(self, trial_id, state, values)

        return self._with_retries(attempt, "set_trial_state_values")

    def get_trial(self, trial_id: int) -> FrozenTrial:
        """FastRDBStorage.get_trial, retried; but the first read of the trial this storage has
        just claimed is the claim's own answer, read in the claim's transaction: the trial is
        RUNNING and its claimer's, so nothing has changed it, and the optuna.Trial built for
        it reads it at once (one query a trial that Optuna's ask() does not make)."""
        claimed, self._just_claimed = self._just_claimed, None
        if claimed is not None and claimed._trial_id == trial_id:
            return claimed
        return self._get_trial(trial_id)

    # Every other call that reaches the database, retried: Optuna's public storage methods,
    # ours, and the calls Optuna's trial cache makes by their private names (their public
    # names here: internals.RDBStorageHooks.PRIVATE_CALLS). Methods that only combine these
    # (get_n_trials, get_trial_params…) are retried through them.
    create_new_study = _retried(FastRDBStorage.create_new_study)
    delete_study = _retried(FastRDBStorage.delete_study)
    set_study_user_attr = _retried(FastRDBStorage.set_study_user_attr)
    set_study_system_attr = _retried(FastRDBStorage.set_study_system_attr)
    get_study_id_from_name = _retried(FastRDBStorage.get_study_id_from_name)
    get_study_name_from_id = _retried(FastRDBStorage.get_study_name_from_id)
    get_study_directions = _retried(FastRDBStorage.get_study_directions)
    get_study_user_attrs = _retried(FastRDBStorage.get_study_user_attrs)
    get_study_system_attrs = _retried(FastRDBStorage.get_study_system_attrs)
    get_all_studies = _retried(FastRDBStorage.get_all_studies)
    create_new_trial = _retried(FastRDBStorage.create_new_trial)
    set_trial_param = _retried(FastRDBStorage.set_trial_param)
    get_trial_param = _retried(FastRDBStorage.get_trial_param)
    set_trial_intermediate_value = _retried(FastRDBStorage.set_trial_intermediate_value)
    set_trial_user_attr = _retried(FastRDBStorage.set_trial_user_attr)
    set_trial_attrs = _retried(FastRDBStorage.set_trial_attrs)
    set_trial_system_attr = _retried(FastRDBStorage.set_trial_system_attr)
    get_trial_user_attrs = _retried(FastRDBStorage.get_trial_user_attrs)
    get_trial_system_attrs = _retried(FastRDBStorage.get_trial_system_attrs)
    get_trial_id_from_study_id_trial_number = _retried(
        FastRDBStorage.get_trial_id_from_study_id_trial_number
    )
    _get_trial = _retried(FastRDBStorage.get_trial)
    get_all_trials = _retried(FastRDBStorage.get_all_trials)
    get_best_trial = _retried(FastRDBStorage.get_best_trial)
    record_heartbeat = _retried(FastRDBStorage.record_heartbeat)
    fail_trial = _retried(FastRDBStorage.fail_trial)
    silences = _retried(FastRDBStorage.silences)
    create_frozen_trial = _retried(FastRDBStorage.create_frozen_trial)
    set_trial_param_checked = _retried(FastRDBStorage.set_trial_param_checked)
    read_trials = _retried(FastRDBStorage.read_trials)
    best_trial_id = _retried(FastRDBStorage.best_trial_id)


@functools.cache
def _claim_query() -> sqlalchemy.Select:
    """How many trials the study ``study_id`` has, how many of them the budget does not count
    (`UNCOUNTED_KEYS`), and its oldest WAITING trial, in one pass over its trials
    (hand-written: Optuna offers none of the three). An uncounted trial is found by index
    probes per trial, in the select list so that the database cannot turn it into a scan of
    every study's system attributes."""
    trials, attributes = internals.table("trials"), internals.table("trial_system_attributes")
    is_uncounted = sqlalchemy.exists().where(
        attributes.c.trial_id == trials.c.trial_id,
        attributes.c.key.in_(UNCOUNTED_KEYS),
    )
    waiting = sqlalchemy.case((trials.c.state == TrialState.WAITING, trials.c.trial_id))
    return sqlalchemy.select(
        sqlalchemy.func.count(),
        sqlalchemy.func.coalesce(
            sqlalchemy.func.sum(sqlalchemy.case((is_uncounted, 1), else_=0)), 0
        ),
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
            values[row.ord] = internals.stored_value(row.number, row.name)
        elif row.kind == 3:
            intermediate[row.ord] = internals.stored_intermediate_value(row.number, row.name)
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
                datetime_start=internals.stored_time(trial.start),
                datetime_complete=internals.stored_time(trial.complete),
                params={
                    name: distributions[name].to_external_repr(value)
                    for _, name, value, _ in params
                },
                distributions=distributions,
                user_attrs=user_attrs,
                system_attrs=system_attrs,
                intermediate_values=dict(sorted(intermediate.items())),  # by step
                trial_id=trial_id,
            )
        )
    return built


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
        internals.table(name)
        for name in (
            "trial_params",
            "trial_values",
            "trial_intermediate_values",
            "trial_user_attributes",
            "trial_system_attributes",
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
    table = internals.table("trials")
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
    selects = internals.table("trials").c.trial_id == trial_id
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
    table = internals.table("trials")
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
def _lock_study(lock: bool = True) -> Any:
    """The study ``study_id``'s row, locked as Optuna's trial creation locks it (FOR UPDATE)
    if `lock`: no row, no such study."""
    table = internals.table("studies")
    select = sqlalchemy.select(table.c.study_id).where(
        table.c.study_id == sqlalchemy.bindparam("study_id")
    )
    return select.with_for_update() if lock else select


@functools.cache
def _change_state(before: TrialState, after: TrialState, stamp: str) -> Any:
    """Move the trial ``id`` from `before` to `after`, its `stamp` time column set to ``at``
    (Optuna's datetime_start on RUNNING, datetime_complete on finishing); no row changes if
    it is not in `before` any more."""
    table = internals.table("trials")
    return (
        table.update()
        .where(table.c.trial_id == sqlalchemy.bindparam("id"), table.c.state == before)
        .values({"state": after, stamp: sqlalchemy.bindparam("at")})
    )


@functools.cache
def _heartbeats_of_running() -> Any:
    """The heartbeat of each RUNNING trial of the study ``study_id`` that has one."""
    trials, heartbeats = internals.table("trials"), internals.table("trial_heartbeats")
    return (
        sqlalchemy.select(trials.c.trial_id, heartbeats.c.heartbeat)
        .join(heartbeats, heartbeats.c.trial_id == trials.c.trial_id)
        .where(
            trials.c.study_id == sqlalchemy.bindparam("study_id"),
            trials.c.state == TrialState.RUNNING,
        )
    )


@functools.cache
def _insert_trial() -> Any:
    """Insert a trial (number, study_id, state, datetime_start); its id comes back as the
    result's inserted_primary_key (RETURNING where the database has it)."""
    table = internals.table("trials")
    columns = ("number", "study_id", "state", "datetime_start")
    values = {name: sqlalchemy.bindparam(name, type_=table.c[name].type) for name in columns}
    return table.insert().values(values)


@functools.cache
def _trial_state() -> Any:
    """A trial's state, by id (parameter ``trial_id``): what Optuna loads a whole ORM object
    for before each write."""
    table = internals.table("trials")
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
    table = internals.table(table_name)
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


def rdb_backend(storage: optuna.storages.BaseStorage) -> RetryingRDBStorage:
    """Our RDBStorage under the trial cache Optuna wraps it in when a study loads it."""
    return internals.backend(storage)  # type: ignore[return-value]


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


def _read_only_sqlite(url: sqlalchemy.URL) -> sqlalchemy.URL:
    """The URL of the SQLite file opened read-only (SQLite's URI ``mode=ro``): reading a study
    then works on a file in a folder the user cannot write, and never writes by mistake.

    A reader of a WAL file needs its index (``-shm``) beside it; where the folder is not
    writable and there is none, SQLite cannot create one, so the file is opened ``immutable``:
    it reads what was last written to the file itself, which is all there is without a
    ``-wal`` beside it.
    """
    path = Path(url.database or "")
    query = {"mode": "ro", "uri": "true"}
    if not os.access(path.parent, os.W_OK | os.X_OK):
        query["immutable"] = "1"
    # Percent-encoded: SQLite reads the name as a URI, where ? and # would end it.
    return url.set(database=f"file:{quote(str(path), safe='/')}", query=query)


def writable(url: str) -> bool:
    """Whether this process may write the study database: False for a SQLite file (or its
    folder) the user cannot write; True for a server, which answers for itself."""
    path = sqlite_file(url)
    if path is None:
        return True
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


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
    url: str,
    *,
    heartbeat: tuple[int, int] | None = None,
    reconnect_seconds: float = RECONNECT_SECONDS,
    wait_for_database: bool = False,
    read_only: bool = False,
    checked: bool = False,
) -> RetryingRDBStorage:
    """Open (creating if needed) the study database at `url`; one storage per URL a process.

    The storage is cached: each holds a connection pool, and a process that opened one per
    call (a polling loop, repeated best_config() calls) would exhaust PostgreSQL's
    connections. RDBStorage is thread-safe, so sharing it is safe.

    Args:
        url: a SQLAlchemy URL (``sqlite:///…``, ``postgresql+psycopg://…``), or a libpq one
            (several hosts, an unescaped ``@`` in the password: see tuner.storage.urls).
        heartbeat: (interval, grace) in seconds, for workers: Optuna's trial heartbeats are
            recorded every interval, and a trial silent for longer than grace becomes FAIL and
            is retried once with the same parameters.
        reconnect_seconds: how long calls retry while the database is unreachable.
        wait_for_database: retry the first connection too, for up to `reconnect_seconds`, as
            every later call is. For workers, which open a database the driver has already
            reached: a refusal there ("too many clients", a restart) is an outage that passes.
            A command opening a URL the user just typed fails at once instead, so a mistake in
            it is one line, not a two-minute wait.
        read_only: for commands that only read: an existing SQLite file is opened read-only
            (`_read_only_sqlite`), neither created nor switched to WAL. A server's database
            is opened as any other time (its permissions are the server's to enforce).
        checked: another process of the run (the worker, for the script it starts) has
            opened this database already, creating its tables and checking their version:
            skip both (Optuna's check reads its migration scripts, 0.1 s a process).

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
    # connections, and RetryingRDBStorage's retry runs the call again on a fresh one.
    engine_kwargs = {"pool_pre_ping": False}
    sqlite_database = parsed.get_backend_name() == "sqlite" and parsed.database not in (
        None,
        "",
        ":memory:",
    )
    if sqlite_database and read_only:
        url = _read_only_sqlite(parsed).render_as_string(hide_password=False)
        engine_kwargs |= {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT}}
    elif parsed.get_backend_name() == "sqlite":
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
    deadline = time.monotonic() + (reconnect_seconds if wait_for_database else 0.0)
    delay = RECONNECT_FIRST_DELAY
    while True:
        try:
            storage = RetryingRDBStorage(
                url,
                reconnect_seconds=reconnect_seconds,
                engine_kwargs=engine_kwargs,
                skip_compatibility_check=checked,
                skip_table_creation=checked,
                **heartbeat_kwargs,
            )
            break
        except (*_DATABASE_ERRORS, ImportError, ValueError) as error:
            reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
            if _is_transient(error) and time.monotonic() + delay <= deadline:
                if delay == RECONNECT_FIRST_DELAY:  # said once, as RetryingRDBStorage does
                    logger.warning(
                        "storage %s unreachable on opening (%s); retrying for up to %.0f s",
                        masked,
                        reason,
                        reconnect_seconds,
                    )
                time.sleep(delay)
                delay = min(2 * delay, RECONNECT_MAX_DELAY)
                continue
            raise StorageError(
                f"cannot reach storage {masked}: {reason}. Check that the database server is "
                "running and the URL is right, or pass another with --storage / TUNER_STORAGE."
            ) from None
    if parsed.get_backend_name() == "sqlite" and not read_only:
        _serialize_sqlite_writers(storage.engine)
    return storage
