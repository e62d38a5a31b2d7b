"""Shared fixtures: an isolated home per test, the spec factory, real SQLite and PostgreSQL
storages, real Ray."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import pytest

from tests.specs import build_spec

if TYPE_CHECKING:
    from tuner.spec import StudySpec

POSTGRES_URL = os.environ.get(
    "TUNER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own data and cache folders, so the default storage is fresh."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TUNER_STORAGE", raising=False)
    monkeypatch.delenv("TUNER_DATA_DIR", raising=False)
    return tmp_path


def _postgres_reachable() -> str | None:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(POSTGRES_URL)
        with engine.connect():
            pass
        engine.dispose()
        return None
    except Exception as error:  # any failure to connect is a reason to skip
        return str(error).splitlines()[0]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The real PostgreSQL server's URL; skip (or fail in CI) when it is not reachable."""
    problem = _postgres_reachable()
    if problem:
        message = f"PostgreSQL at {POSTGRES_URL} is not reachable: {problem}"
        if os.environ.get("TUNER_REQUIRE_POSTGRES"):
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_URL


@pytest.fixture
def make_spec() -> Callable[..., StudySpec]:
    """The spec factory: `tests.specs.build_spec`, a small Rosenbrock study with the sections
    a test names laid over it (``make_spec(name=..., budget={"trials": 9})``)."""
    return build_spec


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A real SQLite file in the test's folder."""
    return f"sqlite:///{tmp_path / 'studies.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each storage the tool supports: one suite runs over both."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'studies.db'}"
        return
    yield request.getfixturevalue("postgres_url")


@pytest.fixture
def study_name(storage_url: str) -> Iterator[str]:
    """A study name unique to this test, deleted afterwards from shared databases."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    storage = optuna.storages.RDBStorage(storage_url)
    if name in optuna.get_all_study_names(storage):
        optuna.delete_study(study_name=name, storage=storage)
    storage.engine.dispose()


@pytest.fixture
def local_ray() -> Iterator[None]:
    """A real local Ray instance, started once and shared (a test that needs its own cluster
    shuts it down; the next user starts it again)."""
    import ray

    from tuner.execution.ray import start_local_ray

    if not ray.is_initialized():
        start_local_ray(2)
    yield
