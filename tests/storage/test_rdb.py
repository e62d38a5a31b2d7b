"""Storage URLs, the default file, masking, and real SQLite and PostgreSQL databases."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import psycopg
import pytest
import sqlalchemy
from optuna.trial import TrialState

from tests.conftest import PrivatePostgres
from tuner.errors import StorageError
from tuner.spec import StudySpec
from tuner.storage import optuna_internals as internals
from tuner.storage.rdb import (
    FastRDBStorage,
    RetryingRDBStorage,
    _is_transient,
    default_storage_path,
    mask_url,
    open_storage,
    rdb_backend,
    resolve_storage_url,
)
from tuner.study import lifecycle as studies


def test_default_is_one_file_in_the_user_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert default_storage_path() == tmp_path / "data" / "tuner" / "studies.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_storage_path() == tmp_path / "home" / ".local" / "share" / "tuner" / "studies.db"


def test_resolution_order_argument_spec_environment_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert resolve_storage_url() == f"sqlite:///{default_storage_path()}"
    monkeypatch.setenv("TUNER_STORAGE", "postgresql+psycopg://env@h/db")
    assert resolve_storage_url() == "postgresql+psycopg://env@h/db"
    assert resolve_storage_url(None, "sqlite:///spec.db") == "sqlite:///spec.db"
    assert resolve_storage_url("sqlite:///arg.db", "sqlite:///spec.db") == "sqlite:///arg.db"


def test_a_bare_path_means_a_sqlite_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_storage_url("my.db") == f"sqlite:///{tmp_path / 'my.db'}"


def test_password_is_masked() -> None:
    masked = mask_url("postgresql+psycopg://bob:s3cret@db.example:5432/studies")
    assert "s3cret" not in masked and "bob" in masked and "db.example" in masked


def test_sqlite_file_is_created_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "folder" / "studies.db"
    storage = open_storage(f"sqlite:///{path}")
    optuna.create_study(study_name="s", storage=storage)
    assert path.exists()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unreachable_postgres_is_a_storage_error() -> None:
    with pytest.raises(StorageError, match="cannot reach storage") as error:
        open_storage("postgresql+psycopg://carol:pw@127.0.0.1:1/none")
    assert "pw@" not in str(error.value)


def test_optuna_tools_read_our_studies(storage_url: str, study_name: str) -> None:
    """Our storage is Optuna's schema as it is: plain Optuna sees the same study."""
    storage = open_storage(storage_url, heartbeat=(1, 3))
    study = optuna.create_study(study_name=study_name, storage=storage)
    study.enqueue_trial({"x": 1.0})
    plain = optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
    assert [trial.state for trial in plain.trials] == [optuna.trial.TrialState.WAITING]
    assert storage.get_heartbeat_interval() is not None


def _study(url: str, name: str, **heartbeat: Any) -> tuple[RetryingRDBStorage, int]:
    storage = open_storage(url, **heartbeat)
    study = optuna.create_study(study_name=name, storage=storage)
    return storage, internals.study_id(study)


def test_attributes_written_in_one_statement_are_what_optuna_writes(
    storage_url: str, study_name: str
) -> None:
    storage, study_id = _study(storage_url, study_name)
    ours, theirs = storage.create_new_trial(study_id), storage.create_new_trial(study_id)
    attributes = {"config": {"lr": 0.1, "betas": [0.9, 0.99]}, "worker": "w0", "seed": 7}
    storage.set_trial_attrs(ours, attributes)
    # An upsert, as Optuna's is; user and system attributes in one transaction.
    storage.set_trial_attrs(ours, {"seed": 8, "curve": []}, {"constraints:diverged": 0.0})
    for key, value in {**attributes, "seed": 8, "curve": []}.items():
        optuna.storages.RDBStorage.set_trial_user_attr(storage, theirs, key, value)
    optuna.storages.RDBStorage.set_trial_system_attr(storage, theirs, "constraints:diverged", 0.0)
    storage.set_trial_system_attr(ours, "relative_params:0", '{"lr": 0.1}')
    storage.set_trial_system_attr(ours, "retry_history", [3, 4])
    optuna.storages.RDBStorage.set_trial_system_attr(
        storage, theirs, "relative_params:0", '{"lr": 0.1}'
    )
    optuna.storages.RDBStorage.set_trial_system_attr(storage, theirs, "retry_history", [3, 4])
    assert storage.get_trial(ours).user_attrs == storage.get_trial(theirs).user_attrs
    assert storage.get_trial(ours).system_attrs == storage.get_trial(theirs).system_attrs
    storage.set_trial_state_values(ours, TrialState.COMPLETE, [1.0])
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_attrs(ours, {"late": True})


def test_heartbeats_are_upserted_and_a_silent_trial_goes_stale(
    storage_url: str, study_name: str
) -> None:
    # Grace 2 s: the beating trial stays fresh through a 2-second stall of a busy machine
    # between its beat and the check. The silent one is quiet for 3.5 s, which SQLite's clock
    # (now() in whole seconds, the beat to the microsecond) can read as up to 1 s less: still
    # past grace (2.5 s was not, once).
    storage, study_id = _study(storage_url, study_name, heartbeat=(1, 2))
    beating, silent = storage.create_new_trial(study_id), storage.create_new_trial(study_id)
    storage.record_heartbeat(silent)
    time.sleep(3.5)
    storage.record_heartbeat(beating)  # its second beat: inserted first, then updated
    storage.record_heartbeat(beating)
    assert storage.stale_trial_ids(study_id) == [silent]


def test_claims_spend_the_budget_in_order_and_retries_come_on_top(
    storage_url: str, study_name: str
) -> None:
    storage, study_id = _study(storage_url, study_name, heartbeat=(60, 120))
    first, second = (storage.claim_trial(study_id, 3) for _ in range(2))
    assert (first.number, second.number) == (0, 1)
    assert first.state == TrialState.RUNNING and first.datetime_start is not None
    # A retry of a dead worker's trial (WAITING, failed_trial) is claimed first, uncounted;
    # a trial enqueued by hand is claimed first too, and counts.
    storage.set_trial_state_values(internals.trial_id(first), TrialState.FAIL)
    retry = optuna.trial.create_trial(
        state=TrialState.WAITING, system_attrs={"failed_trial": 0}, params={}, distributions={}
    )
    retry_id = storage.create_new_trial(study_id, template_trial=retry)
    enqueued_id = storage.create_new_trial(
        study_id, template_trial=optuna.trial.create_trial(state=TrialState.WAITING)
    )
    claimed = [storage.claim_trial(study_id, 3) for _ in range(4)]
    assert [internals.trial_id(trial) for trial in claimed[:2]] == [retry_id, enqueued_id]
    assert claimed[0].system_attrs["failed_trial"] == 0
    assert claimed[2] is None and claimed[3] is None  # 0, 1 and the enqueued one: 3
    trials = storage.get_all_trials(study_id)
    assert [trial.number for trial in trials] == [0, 1, 2, 3]
    assert [trial.state for trial in trials] == [TrialState.FAIL] + [TrialState.RUNNING] * 3
    # Every claimed trial has its heartbeat from the claim: a worker dying right after
    # claiming leaves a trial that goes stale.
    assert storage.stale_trial_ids(study_id) == []
    with storage.engine.connect() as connection:
        beating = connection.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats"))
        assert {internals.trial_id(trial) for trial in trials[1:]} <= set(beating.scalars())


def test_a_claim_retried_after_its_commit_takes_no_second_trial(
    storage_url: str, study_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim commits, then the answer is lost with the connection: the retry must hand
    back the trial already taken, or a retry trial would be left RUNNING and never run."""
    storage, study_id = _study(storage_url, study_name, heartbeat=(60, 120))
    retry = optuna.trial.create_trial(
        state=TrialState.WAITING, system_attrs={"failed_trial": 0}, params={}, distributions={}
    )
    retry_id = storage.create_new_trial(study_id, template_trial=retry)
    committed_then_lost = []
    one_attempt = FastRDBStorage.claim_trial

    def claim_then_lose_the_answer(self: RetryingRDBStorage, *args: Any) -> Any:
        claimed = one_attempt(self, *args)
        if not committed_then_lost:
            committed_then_lost.append(claimed)
            lost = ConnectionError("server closed the connection unexpectedly")
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, lost)
        return claimed

    monkeypatch.setattr(FastRDBStorage, "claim_trial", claim_then_lose_the_answer)
    monkeypatch.setattr("tuner.storage.rdb.RECONNECT_FIRST_DELAY", 0.01)
    for expected in (retry_id, None):  # the retry trial, then a new trial
        committed_then_lost.clear()
        claimed = storage.claim_trial(study_id, 5)
        assert committed_then_lost, "the fault was injected"
        assert internals.trial_id(claimed) == internals.trial_id(committed_then_lost[0])
        if expected is not None:
            assert internals.trial_id(claimed) == expected
    trials = storage.get_all_trials(study_id)
    assert [trial.state for trial in trials] == [TrialState.RUNNING] * 2
    assert claimed.system_attrs == trials[1].system_attrs


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("no such table: trial_heartbeats"), False),
        (ConnectionError("connection refused"), True),  # no server answered
    ],
)
def test_only_errors_that_can_clear_are_retried(error: Exception, transient: bool) -> None:
    assert _is_transient(sqlalchemy.exc.OperationalError("SELECT", {}, error)) is transient


def test_a_broken_sqlite_database_fails_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage, study_id = _study(f"sqlite:///{tmp_path / 'studies.db'}", "s", heartbeat=(60, 120))
    trial_id = storage.create_new_trial(study_id)
    with storage.engine.begin() as connection:
        connection.execute(sqlalchemy.text("DROP TABLE trial_heartbeats"))
    with pytest.raises(optuna.exceptions.StorageInternalError) as error:
        storage.record_heartbeat(trial_id)
    assert "no such table" in str(error.value.__cause__)
    assert "retrying" not in caplog.text


def test_a_claimed_trial_takes_parameters_under_any_sampler(
    storage_url: str, study_name: str, make_spec: Callable[..., StudySpec]
) -> None:
    """The claim bypasses Optuna's trial cache, which must still know the trial: the random
    sampler reads no trials before the first parameter is set."""
    spec = make_spec(
        name=study_name,
        workload={"name": "rosenbrock"},
        search={"optimizers": ["sgd", "adam"]},
        budget={"trials": 2, "epochs": 1},
        sampler={"name": "grid"},  # random sampling, the optimizer fixed in turn
    )
    studies.create_or_resume(spec, open_storage(storage_url))
    study = studies.load(spec, open_storage(storage_url))  # as a worker attaches
    for optimizer in ["sgd", "adam"]:
        trial = studies.claim_trial(study, spec)
        assert trial.suggest_categorical("optimizer", ["sgd", "adam"]) == optimizer
        trial.suggest_float("x", 0, 1)
        study.tell(trial, 1.0)
    assert studies.claim_trial(study, spec) is None
    assert [trial.params["optimizer"] for trial in study.trials] == ["sgd", "adam"]


def _same_trial(ours: optuna.trial.FrozenTrial, theirs: optuna.trial.FrozenTrial) -> bool:
    """Equal, a NaN intermediate value equal to a NaN."""
    nan = float("nan")
    mine = {k: nan if v != v else v for k, v in ours.intermediate_values.items()}
    their = {k: nan if v != v else v for k, v in theirs.intermediate_values.items()}
    same_nans = {k for k, v in mine.items() if v != v} == {k for k, v in their.items() if v != v}
    values = {k: v for k, v in mine.items() if v == v} == {k: v for k, v in their.items() if v == v}
    ours_rest = {**vars(ours), "intermediate_values": None}
    theirs_rest = {**vars(theirs), "intermediate_values": None}
    return same_nans and values and ours_rest == theirs_rest


def test_trials_read_in_one_statement_are_what_optuna_reads(
    storage_url: str, study_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, study_id = _study(storage_url, study_name)
    study = optuna.load_study(study_name=study_name, storage=storage)
    study.enqueue_trial({"optimizer": "adam"})
    for index in range(5):
        trial = study.ask()
        trial.suggest_categorical("optimizer", ["sgd", "adam"])
        trial.suggest_float("learning_rate", 1e-5, 1.0, log=True)
        trial.suggest_int("layers", 1, 9, step=2)
        trial.suggest_float("momentum", 0.0, 0.9, step=0.1)
        trial.set_user_attr("config", {"betas": [0.9, 0.999], "nesterov": None})
        storage.set_trial_system_attr(internals.trial_id(trial), "note", f"trial {index}")
        trial.report(float("nan") if index == 1 else 0.5 / (index + 1), 1)
        trial.report(float("inf") if index == 2 else -float("inf"), 2)
        if index < 4:
            study.tell(trial, [0.25 * index, float("inf"), -float("inf"), 1.0][index])
    study.enqueue_trial({"optimizer": "sgd"})
    optuna_read = internals.RDBStorageHooks.read_trials  # Optuna's own read
    theirs = optuna_read(storage, study_id, None, set(), -1)
    ours = storage.read_trials(study_id, None, set(), -1)
    assert len(ours) == len(theirs) == 6
    assert all(_same_trial(a, b) for a, b in zip(ours, theirs, strict=True))
    # A study too large for one IN list is read in chunks of ids: the same trials.
    with monkeypatch.context() as patch:
        patch.setattr("tuner.storage.rdb._MAX_TRIAL_IDS", 4)
        chunked = storage.read_trials(study_id, None, set(), -1)
    assert len(chunked) == 6
    assert all(_same_trial(a, b) for a, b in zip(chunked, theirs, strict=True))
    for trial in theirs:
        assert _same_trial(storage.get_trial(internals.trial_id(trial)), trial)
    # The refresh Optuna's trial cache makes: its unfinished trials and all after one id.
    unfinished = {internals.trial_id(t) for t in theirs if not t.state.is_finished()}
    after = internals.trial_id(theirs[3])
    for states in (None, (TrialState.RUNNING, TrialState.WAITING), (TrialState.COMPLETE,)):
        for included, last in ((unfinished, after), (set(), after), (unfinished, -1)):
            expected = optuna_read(storage, study_id, states, included, last)
            got = storage.read_trials(study_id, states, included, last)
            assert [t.number for t in got] == [t.number for t in expected]
            assert all(_same_trial(a, b) for a, b in zip(got, expected, strict=True))
    with pytest.raises(KeyError):
        storage.get_trial(max(unfinished) + 1000)
    with pytest.raises(KeyError):
        storage.read_trials(study_id + 1000, None, set(), -1)


def test_every_call_that_reaches_the_database_is_retried() -> None:
    """Each public storage method RDBStorage implements, ours, and those Optuna's trial cache
    calls by private names, is overridden in RetryingRDBStorage's class body."""
    rdb = optuna.storages.RDBStorage
    public = {
        name
        for name in dir(optuna.storages.BaseStorage)
        if not name.startswith("_") and name in vars(rdb)
    } - {"check_trial_is_updatable", "remove_session"}
    ours = {"set_trial_attrs", "record_heartbeat", "fail_trial", "silences", "claim_trial"}
    hooks = set(internals.RDBStorageHooks.PRIVATE_CALLS.values())
    assert public | ours | hooks <= set(vars(RetryingRDBStorage))


@pytest.mark.postgres
def test_a_worker_waits_out_a_refused_first_connection(
    private_postgres: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker's first connection refused for too many clients is retried like any later
    call, where a command opening a URL the user typed says at once that it cannot reach it.
    The refusal is PostgreSQL's own: a role allowed two connections, both held."""
    admin = private_postgres.url.replace("+psycopg", "")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute("CREATE ROLE worker LOGIN CONNECTION LIMIT 2")
        connection.execute("CREATE DATABASE studies OWNER worker")
    url = private_postgres.url.replace("postgres@", "worker@").replace("/postgres", "/studies")
    held = [psycopg.connect(url.replace("+psycopg", "")) for _ in range(2)]
    with pytest.raises(StorageError, match=r"cannot reach storage .*too many connections"):
        open_storage(url)
    opened: list[Any] = []
    worker = threading.Thread(
        target=lambda: opened.append(open_storage(url, wait_for_database=True))
    )
    worker.start()
    deadline = time.monotonic() + 120
    while "unreachable on opening" not in caplog.text:
        assert time.monotonic() < deadline and worker.is_alive(), "the refusal was not seen"
        time.sleep(0.1)
    for connection in held:
        connection.close()
    worker.join(timeout=300)
    assert opened, "the worker's storage did not open once a connection was free"
    optuna.create_study(study_name="after-the-refusal", storage=opened[0])
    assert optuna.get_all_study_names(opened[0]) == ["after-the-refusal"]


def test_attributes_given_with_tell_land_in_tells_transaction(
    storage_url: str, study_name: str
) -> None:
    """A finished trial's attributes and its state in one commit; and none of them where the
    tell is refused (the trial was finished elsewhere meanwhile)."""
    storage = open_storage(storage_url)
    study = optuna.create_study(study_name=study_name, storage=storage)
    backend = rdb_backend(internals.study_storage(study))
    commits: list[object] = []
    count = commits.append  # one object: event.remove finds a listener by identity
    trial = study.ask()
    trial_id = internals.trial_id(trial)
    sqlalchemy.event.listen(backend.engine, "commit", count)
    try:
        with backend.attrs_with_tell(trial_id, {"curve": [1.0]}, {"tuner:x": 2}):
            internals.tell(study, trial, 0.5, TrialState.COMPLETE)
    finally:
        sqlalchemy.event.remove(backend.engine, "commit", count)
    told = backend.get_trial(trial_id)
    assert told.state == TrialState.COMPLETE and told.value == 0.5
    assert told.user_attrs["curve"] == [1.0] and told.system_attrs["tuner:x"] == 2
    writes = len(commits)

    late = study.ask()
    study.tell(late, 1.0)  # finished elsewhere first
    with (
        pytest.raises(optuna.exceptions.UpdateFinishedTrialError),
        backend.attrs_with_tell(internals.trial_id(late), {"curve": [9.0]}, {}),
    ):
        internals.tell(study, late, 2.0, TrialState.COMPLETE)
    assert "curve" not in backend.get_trial(internals.trial_id(late)).user_attrs
    # The tell read the trial (a transaction of its own) and wrote it with its attributes.
    assert writes == 2
