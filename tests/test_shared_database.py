"""A shared study database, read by someone careful and probed by someone who is not: reading a
study runs none of the code it names, no secret is printed however it is spelt, a refusal
writes nothing, and a database the user cannot write can still be read."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from tests.specs import build_spec
from tests.views.test_dashboard import dashboard, get_json, study_id
from tuner.execution.worker import run_worker
from tuner.spec import NAME_LIMIT
from tuner.storage.rdb import open_storage
from tuner.study import lifecycle as studies

ROOT = Path(__file__).parent.parent
TUNER = [sys.executable, "-m", "tuner.cli"]
QUICKSTART = ROOT / "studies" / "quickstart.toml"


def tuner(*args: str, as_user: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """`tuner ARGS` as a real process, run to its end."""
    return subprocess.run(
        [*(as_user or []), *TUNER, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def one_line_refusal(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 2 with one line on stderr that says `words`, and no traceback."""
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert all(word in result.stderr for word in words), result.stderr


@pytest.fixture
def crafted_study(storage_url: str, study_name: str, tmp_path: Path) -> Iterator[Path]:
    """A finished study whose recorded spec was then rewritten, as anyone who can write to
    the database could: its workload and an optimizer class are modules beside it that, once
    imported, append to a marker file. Yields the marker's path (absent until then)."""
    spec = build_spec(
        name=study_name,
        search={"optimizers": ["adam"], "weight_decay": "off"},
        budget={"trials": 3, "epochs": 2},
        sampler={"name": "random"},
        pruner={"name": "none"},
    )
    studies.create_or_resume(spec, open_storage(storage_url))
    run_worker(spec, storage_url)
    code, marker = tmp_path / "planted", tmp_path / "marker"
    code.mkdir()
    for module in ("planted_workload", "planted_optimizer"):
        (code / f"{module}.py").write_text(
            f"open({str(marker)!r}, 'a').write({module!r} + '\\n')\n"
            "def train(trial):\n    pass\n\nclass Optimizer:\n    pass\n"
        )
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    recorded = study.user_attrs["spec"]
    recorded["workload"] = {
        "name": "planted_workload:train",
        "command": None,
        "options": {},
        "search_path": [str(code)],
    }
    recorded["optimizers"]["planted"] = {
        "class": "planted_optimizer:Optimizer",
        "learning_rate": [0.001, 0.1],
    }
    study.set_user_attr("spec", recorded)
    yield marker


def test_reading_a_study_runs_none_of_the_code_it_names(
    crafted_study: Path, storage_url: str, study_name: str, tmp_path: Path
) -> None:
    marker = crafted_study
    for command in (["status"], ["best"], ["best", "--json"], ["report", "--out", "report"]):
        result = tuner(command[0], study_name, "--storage", storage_url, *command[1:])
        assert result.returncode == 0, (command, result.stderr)
        assert not marker.exists(), (command, marker.read_text())
    probe = f"import tuner; print(tuner.best_config({study_name!r}, storage={storage_url!r}).value)"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), ("best_config()", marker.read_text())
    with dashboard(storage_url, tmp_path / "dashboard.log") as base:
        identifier = study_id(base, study_name)
        for page in ("api/meta", "api/studies", f"api/studies/{identifier}"):
            get_json(f"{base}/{page}")
        with urllib.request.urlopen(f"{base}/dashboard", timeout=30) as response:
            assert response.status == 200
        try:
            get_json(f"{base}/api/studies/{identifier}/param_importances")
        except urllib.error.HTTPError as error:  # too few trials: the reason, as data
            assert error.code == 400
    assert not marker.exists(), ("dashboard", marker.read_text())

    # `tuner worker` exists to run the study's code: it says first what, and from where.
    worker = tuner("worker", study_name, "--storage", storage_url)
    first = worker.stdout.splitlines()[0]
    assert "planted_workload:train" in first and str(crafted_study.parent / "planted") in first
    assert "planted_optimizer:Optimizer" in first
    assert marker.exists()  # the planted code is real: running the study does import it


@pytest.mark.postgres
def test_a_password_is_masked_however_its_key_is_spelt(postgres_url: str) -> None:
    """libpq reads ``pass%77ord`` as ``password`` (SQLAlchemy decodes the key): the server
    (trust authentication) is reached with it, and the error names the URL masked."""
    url = f"{postgres_url}{'&' if '?' in postgres_url else '?'}pass%77ord=hunter2"
    result = tuner("status", "no-such-study", "--storage", url)
    one_line_refusal(result, "no study named 'no-such-study'", "pass%77ord=***")
    assert "hunter2" not in result.stderr


def test_a_refused_warm_start_leaves_no_database(tmp_path: Path) -> None:
    folder = tmp_path / "fresh"
    storage = f"sqlite:///{folder / 'studies.db'}"
    result = tuner("run", str(QUICKSTART), "--storage", storage, "--warm-start", "missing")
    one_line_refusal(result, "no study named 'missing'")
    assert not folder.exists()


@pytest.mark.parametrize(
    ("override", "words"),
    [
        (f"name={'n' * 10_000}", ["name", f"at most {NAME_LIMIT} characters"]),
        ("name='..'", ["name", "dots alone"]),
        ("budget.trials=1000000000000", ["[budget] trials", "less than or equal"]),
    ],
)
def test_names_and_budgets_the_database_cannot_hold_are_refused_first(
    tmp_path: Path, override: str, words: list[str]
) -> None:
    """Refused with the rest of the file, before Ray starts or the storage is opened."""
    storage = f"sqlite:///{tmp_path / 'db' / 'studies.db'}"
    result = tuner("run", str(QUICKSTART), "--storage", storage, "--set", override)
    one_line_refusal(result, *words)
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize("flag", [["--confirm", "3"], ["--batch", "0"], ["--trials", "many"]])
def test_a_malformed_flag_is_one_line(flag: list[str]) -> None:
    one_line_refusal(tuner("run", str(QUICKSTART), *flag), flag[0], "tuner run --help")


def _without_root_override() -> list[str]:
    """A command prefix under which this process's permissions hold: root's bypass of file
    permissions dropped (setpriv), as a plain user has none."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("as root, a read-only folder needs setpriv to drop root's override")
    dropped = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={dropped}", f"--inh-caps={dropped}", "--"]


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_a_study_in_a_read_only_folder_can_be_read(
    storage_url: str, study_name: str, tmp_path: Path
) -> None:
    spec = build_spec(name=study_name, search={"optimizers": ["adam"]}, pruner={"name": "none"})
    studies.create_or_resume(spec, open_storage(storage_url))
    run_worker(spec, storage_url)
    with sqlite3.connect(tmp_path / "studies.db") as connection:  # the WAL into the file
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    folder = tmp_path / "shared"  # the file alone, as a closed database leaves it
    folder.mkdir()
    shutil.copy(tmp_path / "studies.db", folder / "studies.db")
    (folder / "studies.db").chmod(0o444)
    folder.chmod(0o555)
    storage, as_user = f"sqlite:///{folder / 'studies.db'}", _without_root_override()
    try:
        best = tuner("best", study_name, "--json", "--storage", storage, as_user=as_user)
        assert best.returncode == 0, best.stderr
        assert json.loads(best.stdout)["study"] == study_name
        status = tuner("status", study_name, "--storage", storage, as_user=as_user)
        assert status.returncode == 0, status.stderr
        assert f"{study_name}: 4 trials" in status.stdout
        report = tuner(
            "report",
            study_name,
            "--storage",
            storage,
            "--out",
            str(tmp_path / "r"),
            as_user=as_user,
        )
        assert report.returncode == 0, report.stderr
        # And a report cannot go into that folder: one line, not a traceback.
        into = tuner(
            "report", study_name, "--storage", storage, "--out", str(folder / "r"), as_user=as_user
        )
        one_line_refusal(into, str(folder / "r"))
        assert sorted(path.name for path in folder.iterdir()) == ["studies.db"]
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_a_report_into_a_file_is_one_line(
    crafted_study: Path, study_name: str, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    taken = tmp_path / "taken.html"
    taken.write_text("mine")
    result = tuner("report", study_name, "--storage", storage, "--out", str(taken))
    one_line_refusal(result, str(taken), "is a file")
    assert taken.read_text() == "mine"
