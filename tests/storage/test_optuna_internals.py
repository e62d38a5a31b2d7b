"""One test per assumption tuner.storage.optuna_internals makes about Optuna's private API: an
Optuna release that breaks one fails the test named for it."""

from __future__ import annotations

import inspect
import math
import re
from datetime import datetime
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.storages import _cached_storage
from optuna.trial import TrialState

from tuner.storage import optuna_internals as internals
from tuner.storage.rdb import RetryingRDBStorage, open_storage


@pytest.fixture
def storage(tmp_path: Path) -> RetryingRDBStorage:
    return open_storage(f"sqlite:///{tmp_path / 'studies.db'}")


@pytest.fixture
def study(storage: RetryingRDBStorage) -> optuna.Study:
    return optuna.create_study(study_name="s", storage=storage)


#: The tables and columns tuner's SQL (tuner.storage.rdb) reads and writes.
SCHEMA = {
    "studies": {"study_id"},
    "trials": {"trial_id", "number", "study_id", "state", "datetime_start", "datetime_complete"},
    "trial_params": {"param_id", "trial_id", "param_name", "param_value", "distribution_json"},
    "trial_values": {"trial_id", "objective", "value", "value_type"},
    "trial_intermediate_values": {
        "trial_id",
        "step",
        "intermediate_value",
        "intermediate_value_type",
    },
    "trial_user_attributes": {"trial_user_attribute_id", "trial_id", "key", "value_json"},
    "trial_system_attributes": {"trial_system_attribute_id", "trial_id", "key", "value_json"},
    "trial_heartbeats": {"trial_id", "heartbeat"},
}


def test_a_study_name_the_spec_accepts_fits_the_database_column() -> None:
    """`tuner.spec.NAME_LIMIT` is the length of Optuna's ``study_name`` column."""
    from tuner.spec import NAME_LIMIT

    assert internals.table("studies").c.study_name.type.length == NAME_LIMIT


def test_the_schema_has_the_tables_and_columns_our_sql_names() -> None:
    for name, columns in SCHEMA.items():
        assert columns <= set(internals.table(name).c.keys()), name


def test_a_session_commits_and_reports_database_errors_as_storage_errors(
    storage: RetryingRDBStorage, study: optuna.Study
) -> None:
    trials = internals.table("trials")
    trial_id = storage.create_new_trial(internals.study_id(study))
    with internals.session(storage) as session:
        session.execute(trials.update().values(number=7).where(trials.c.trial_id == trial_id))
    assert storage.get_trial(trial_id).number == 7  # committed
    broken = pytest.raises(optuna.exceptions.StorageInternalError)
    with broken as error, internals.session(storage) as session:
        session.execute(sqlalchemy.text("SELECT * FROM no_such_table"))
    assert isinstance(error.value.__cause__, sqlalchemy.exc.OperationalError)


def test_stored_values_read_back_as_optuna_reads_them(
    storage: RetryingRDBStorage, study: optuna.Study
) -> None:
    values = [1.5, math.inf, -math.inf]
    for value in values:
        trial = study.ask()
        trial.report(math.nan, 0)
        trial.report(value, 1)
        study.tell(trial, value)
    values_table = internals.table("trial_values")
    intermediate = internals.table("trial_intermediate_values")
    with internals.session(storage) as session:
        stored = session.execute(
            sqlalchemy.select(
                values_table.c.value, sqlalchemy.cast(values_table.c.value_type, sqlalchemy.String)
            )
        ).all()
        reports = session.execute(
            sqlalchemy.select(
                intermediate.c.intermediate_value,
                sqlalchemy.cast(intermediate.c.intermediate_value_type, sqlalchemy.String),
            ).order_by(intermediate.c.trial_id, intermediate.c.step)
        ).all()
    assert [internals.stored_value(number, kind) for number, kind in stored] == values
    read = [internals.stored_intermediate_value(number, kind) for number, kind in reports]
    assert all(math.isnan(value) for value in read[0::2])
    assert read[1::2] == values


def test_times_are_stored_as_naive_utc_and_returned_as_naive_local_time(
    storage: RetryingRDBStorage, study: optuna.Study
) -> None:
    trial = study.ask()
    study.tell(trial, 1.0)
    trials = internals.table("trials")
    with internals.session(storage) as session:
        start, complete = session.execute(
            sqlalchemy.select(trials.c.datetime_start, trials.c.datetime_complete)
        ).one()
    theirs = optuna.storages.RDBStorage.get_trial(storage, internals.trial_id(trial))
    assert internals.stored_time(start) == theirs.datetime_start
    assert internals.stored_time(complete) == theirs.datetime_complete
    assert internals.time_to_store(theirs.datetime_start) == start
    now = datetime.now().replace(microsecond=0)
    assert internals.stored_time(internals.time_to_store(now)) == now


def test_optuna_writes_an_attribute_and_a_heartbeat_in_our_transaction(
    storage: RetryingRDBStorage, study: optuna.Study
) -> None:
    trial_id = storage.create_new_trial(internals.study_id(study))
    with internals.session(storage) as session:
        internals.set_trial_attr_in(storage, session, False, trial_id, "user", [1, 2])
        internals.set_trial_attr_in(storage, session, True, trial_id, "system", {"a": 1})
        internals.record_heartbeat_in(session, trial_id)
    trial = storage.get_trial(trial_id)
    assert trial.user_attrs == {"user": [1, 2]} and trial.system_attrs == {"system": {"a": 1}}
    with internals.session(storage) as session:
        heartbeats = internals.table("trial_heartbeats")
        assert session.execute(sqlalchemy.select(heartbeats.c.trial_id)).scalars().all() == [
            trial_id
        ]


def test_a_constraint_written_as_an_attribute_is_the_one_set_constraint_sets(
    storage: RetryingRDBStorage, study: optuna.Study
) -> None:
    theirs, ours = study.ask(), study.ask()
    theirs.set_constraint("diverged", 1.0)
    storage.set_trial_attrs(ours._trial_id, {}, {internals.constraint_attr("diverged"): 1.0})
    for trial in (theirs, ours):
        study.tell(trial, 0.0)
    frozen = study.get_trials()
    assert frozen[0].system_attrs == frozen[1].system_attrs
    assert frozen[1].constraints == {"diverged": 1.0}


@pytest.mark.parametrize(
    ("value", "state"), [(2.0, TrialState.COMPLETE), (None, TrialState.PRUNED)]
)
def test_a_trial_told_without_its_read_back_is_told_as_study_tell_tells_it(
    study: optuna.Study, value: float | None, state: TrialState
) -> None:
    theirs, ours = study.ask(), study.ask()
    for trial in (theirs, ours):
        trial.report(3.0, step=1)
    study.tell(theirs, value, state=state)
    internals.tell(study, ours, value, state)
    told = study.get_trials()
    assert [(trial.state, trial.value) for trial in told] == [(state, value or 3.0)] * 2


def test_the_trial_cache_calls_no_private_backend_method_we_do_not_route() -> None:
    """Optuna's trial cache reads and writes through these private RDBStorage methods:
    a storage that retries must see those calls (RDBStorageHooks forwards each)."""
    called = set(re.findall(r"self\._backend\.(_\w+)\(", inspect.getsource(_cached_storage)))
    assert called == set(internals.RDBStorageHooks.PRIVATE_CALLS)


@pytest.mark.parametrize("private", sorted(internals.RDBStorageHooks.PRIVATE_CALLS))
def test_a_private_hook_takes_the_arguments_of_our_method(private: str) -> None:
    theirs = inspect.signature(getattr(optuna.storages.RDBStorage, private))
    ours_name = internals.RDBStorageHooks.PRIVATE_CALLS[private]
    ours = inspect.signature(getattr(internals.RDBStorageHooks, ours_name))
    assert list(theirs.parameters) == list(ours.parameters)


def test_a_study_reaches_our_storage_through_its_cache_by_ids(
    storage: RetryingRDBStorage, study: optuna.Study
) -> None:
    loaded = optuna.load_study(study_name="s", storage=storage)
    assert internals.backend(internals.study_storage(loaded)) is storage
    assert internals.study_id(loaded) == storage.get_study_id_from_name("s")
    trial = loaded.ask()
    frozen = storage.get_all_trials(internals.study_id(loaded))[0]
    assert internals.trial_id(trial) == internals.trial_id(frozen)
    assert storage.get_trial(internals.trial_id(trial)).number == trial.number


def test_a_trial_created_past_the_cache_is_known_to_it_once_remembered(
    storage: RetryingRDBStorage, study: optuna.Study
) -> None:
    loaded = optuna.load_study(study_name="s", storage=storage)
    loaded.get_trials()  # the cache has read the study: it would not look for a new trial
    claimed = storage.claim_trial(internals.study_id(loaded), None)
    internals.remember_trial(loaded, claimed)
    trial = optuna.Trial(loaded, internals.trial_id(claimed))
    assert trial.suggest_float("x", 0.0, 1.0) == trial.params["x"]
    loaded.tell(trial, 1.0)
    assert [t.state for t in loaded.get_trials()] == [TrialState.COMPLETE]
