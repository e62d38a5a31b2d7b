"""Shared fixtures: an isolated home per test, the spec factory, real SQLite and PostgreSQL
storages, real Ray."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
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


class PrivatePostgres:
    """A PostgreSQL server of one test's own, in a temporary folder, on a free loopback port:
    a test may stop and start it (an outage) without touching any server others use.

    Debian's binaries (``/usr/lib/postgresql/N/bin``, or ``$TUNER_TEST_PG_BIN``). PostgreSQL
    refuses to run as root, so as root the server runs as the ``postgres`` user (runuser), in a
    folder that user owns.
    """

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.folder = Path(tempfile.mkdtemp(prefix="tuner-pg-"))
        self.data = self.folder / "data"
        with socket.socket() as probe:  # a port free now; the server takes it a moment later
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._as = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        command = [*self._as, str(self.binaries / tool), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.folder / "log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        """Stop the server at once, dropping every connection (as a crash or a restart)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        subprocess.run(
            [
                *self._as,
                str(self.binaries / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of the test's own (PrivatePostgres); skipped (failed in CI) where
    PostgreSQL's binaries are not installed."""
    found = os.environ.get("TUNER_TEST_PG_BIN") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), None
    )
    if not found or not (Path(found) / "initdb").exists():
        message = "PostgreSQL's initdb and pg_ctl are not installed (set TUNER_TEST_PG_BIN)"
        if os.environ.get("TUNER_REQUIRE_POSTGRES"):
            pytest.fail(message)
        pytest.skip(message)
    server = PrivatePostgres(Path(found))
    yield server
    server.remove()


@pytest.fixture
def tuner_process() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start ``tuner`` commands as real processes (stderr piped); any still running at
    teardown is killed."""
    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-m", "tuner.cli", *args],
            cwd=Path(__file__).parent.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


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
