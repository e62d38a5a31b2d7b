"""Storage URLs in every form libpq and SQLAlchemy accept: never printed or recorded with a
secret, and opened as libpq would open them (several hosts, an unescaped ``@``)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest

from tuner.storage.rdb import open_storage
from tuner.storage.urls import mask_url, sqlalchemy_url

ROOT = Path(__file__).parents[2]
QUICKSTART = ROOT / "studies" / "quickstart.toml"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg://alice:hunter2@db/tuner", "postgresql+psycopg://alice:***@db/tuner"),
        (
            "postgresql+psycopg://alice@db/tuner?password=hunter2&sslmode=require",
            "postgresql+psycopg://alice@db/tuner?password=***&sslmode=require",
        ),
        (
            "postgresql+psycopg://alice@db/tuner?sslkey=/k.pem&sslpassword=hunter2",
            "postgresql+psycopg://alice@db/tuner?sslkey=/k.pem&sslpassword=***",
        ),
        ("postgresql+psycopg://alice:hun@ter2@db/tuner", "postgresql+psycopg://alice:***@db/tuner"),
        (
            "postgresql+psycopg://alice:hunter2@h1:5432,h2:5433/tuner",
            "postgresql+psycopg://alice:***@h1:5432,h2:5433/tuner",
        ),
        ("postgresql+psycopg://alice@db/tuner?password=a@hunter2", None),
        ("mysql+pymysql://alice:hunter2@db/tuner?api_token=hunter2", None),
        ("sqlite:////home/a@b/studies.db", "sqlite:////home/a@b/studies.db"),
        # A key SQLAlchemy decodes (parse_qsl) is the same key to libpq, however spelt.
        ("postgresql://alice@db/t?pass%77ord=hunter2", "postgresql://alice@db/t?pass%77ord=***"),
        (
            "postgresql://alice@db/t?sslmode=require&PASSWORD=hunter2&ssl%70assword=hunter2",
            "postgresql://alice@db/t?sslmode=require&PASSWORD=***&ssl%70assword=***",
        ),
        ("postgresql://alice@db/t?%70%61%73%73%77%6f%72%64=hunter2", None),
    ],
)
def test_every_secret_is_masked_and_the_rest_kept(url: str, masked: str | None) -> None:
    shown = mask_url(url)
    assert "hunter2" not in shown and "ter2" not in shown
    if masked is not None:
        assert shown == masked


@pytest.mark.postgres
@pytest.mark.parametrize(
    "form",
    [
        # libpq tries each host in turn: port 1 refuses, the server answers on the second.
        "postgresql+psycopg://{user}:hunter2@127.0.0.1:1,{host}:{port}/{db}",
        # An unescaped @ in the password (the server trusts loopback, so any password will do).
        "postgresql+psycopg://{user}:hun@ter2@{host}:{port}/{db}?sslpassword=hunter2",
    ],
)
def test_libpq_forms_open_the_real_server(postgres_url: str, form: str) -> None:
    parsed = optuna.storages.RDBStorage(postgres_url).engine.url
    url = form.format(
        user=parsed.username, host=parsed.host, port=parsed.port or 5432, db=parsed.database
    )
    assert "hunter2" not in mask_url(url)
    storage = open_storage(url)
    name = f"urls-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=storage)
    try:
        assert name in optuna.get_all_study_names(storage)
    finally:
        optuna.delete_study(study_name=name, storage=storage)


def test_plain_urls_pass_unchanged() -> None:
    for url in ("sqlite:////tmp/x.db", "postgresql+psycopg://u:p@h:5432/db?sslmode=require"):
        assert sqlalchemy_url(url) == url


@pytest.mark.postgres
@pytest.mark.workers
def test_tuner_run_prints_and_records_no_secret(postgres_url: str, tmp_path: Path) -> None:
    """Every place `tuner run` shows the URL (the start line, "lives in", both hints), the
    study's recorded spec (the dashboard shows it to anyone), and `tuner best`'s errors."""
    parsed = optuna.storages.RDBStorage(postgres_url).engine.url
    url = (
        f"postgresql+psycopg://{parsed.username}:hun@ter2@127.0.0.1:1,{parsed.host}:"
        f"{parsed.port or 5432}/{parsed.database}?password=hunter2&sslpassword=hunter2"
    )
    name = f"secret-{uuid.uuid4().hex[:8]}"

    def tuner(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tuner.cli", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )

    run = tuner(
        "run", str(QUICKSTART), "--storage", url, "--trials", "1", "--set", f"name='{name}'"
    )
    storage = open_storage(url)
    try:
        assert run.returncode == 0, run.stderr
        shown = run.stdout + run.stderr
        assert "ter2" not in shown
        assert f"Study {name} in postgresql+psycopg://" in shown
        assert f"lives in {mask_url(url)}" in shown
        assert f"tuner best {name} --storage '{mask_url(url)}'" in shown
        recorded = optuna.load_study(study_name=name, storage=storage).user_attrs["spec"]
        assert "ter2" not in str(recorded)
        best = tuner("best", "absent", "--storage", url)
        assert best.returncode == 2 and "no study named 'absent'" in best.stderr
        assert "ter2" not in best.stderr and "***" in best.stderr
    finally:
        optuna.delete_study(study_name=name, storage=storage)


def test_artifacts_of_a_multi_host_storage_live_in_the_shared_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tuner dashboard` on such a URL found its artifact folder by parsing it (a traceback)."""
    from tuner.storage.artifacts import artifact_dir

    monkeypatch.setenv("TUNER_ARTIFACT_DIR", str(tmp_path / "shared"))
    assert artifact_dir("postgresql+psycopg://u:pw@h1:5432,h2:5433/db") == tmp_path / "shared"
