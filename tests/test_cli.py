"""The ``tuner`` command as a user types it: errors exit 2 with a clear line and write nothing."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest

from tuner.cli import main
from tuner.execution.resources import usable_cpus
from tuner.storage.rdb import default_storage_path

ROOT = Path(__file__).parent.parent
QUICKSTART = ROOT / "studies" / "quickstart.toml"


def _tuner(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuner.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _set(*assignments: str) -> list[str]:
    """`tuner run` on the quickstart study with these --set overrides."""
    return ["run", str(QUICKSTART), *(arg for a in assignments for arg in ("--set", a))]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.toml"], "missing.toml: no such study file"),
        (["run", str(QUICKSTART), "--set", "budget.trials=-3"], r"[budget] trials"),
        (
            ["run", str(QUICKSTART), "--set", "search.optimizers=['adamm']"],
            "unknown optimizer 'adamm'",
        ),
        (
            ["run", str(QUICKSTART), "--set", "optimizers.adam.learning_rate=[1e-2, 1e-4]"],
            "low 0.01 is above high 0.0001",
        ),
        (
            ["run", str(QUICKSTART), "--set", "optimizers.sgd.learning_rate=[-1e-2, 1e-1]"],
            "bounds must be positive",
        ),
        (["run", str(QUICKSTART), "--set", "budget.trails=3"], "unknown key"),
        (["run", str(QUICKSTART), "--workers", "0"], "[execution] workers"),
        (["run", str(QUICKSTART), "--set", "execution.grace_seconds=4"], "grace_seconds must be"),
        (
            ["run", str(QUICKSTART), "--set", "optimizers.adamw.weight_decay=0"],
            "[optimizers.adamw] weight_decay: expected a number or [low, high] > 0 (to turn it "
            'off, set [search] weight_decay = "off")',
        ),
        # NaN and infinity are no bounds (they once became null in the recorded spec).
        (_set("optimizers.sgd.learning_rate=nan"), "[optimizers.sgd] learning_rate: expected a"),
        (_set("optimizers.sgd.learning_rate=[1e-3,inf]"), "[optimizers.sgd] learning_rate"),
        (_set("search.max_grad_norm=[1.0,inf]"), "[search] max_grad_norm: Input should be a fin"),
        (_set("execution.gpus_per_trial=nan"), "[execution] gpus_per_trial: Input should be a fi"),
        (_set("execution.cpus_per_trial=inf"), "[execution] cpus_per_trial: Input should be a fi"),
        # A table, a string, a boolean where a number belongs.
        (_set("optimizers.sgd.learning_rate={a=1}"), "[optimizers.sgd] learning_rate: expected"),
        (_set('optimizers.sgd.learning_rate="abc"'), "[optimizers.sgd] learning_rate: expected"),
        (_set("budget.trials=true"), "[budget] trials: Input should be a valid integer, got true"),
        # numpy's RandomState (Optuna's samplers) takes 0 <= seed < 2**32.
        (_set("seed=-1"), "seed: Input should be greater than or equal to 0"),
        (_set(f"seed={2**40}"), "seed: Input should be less than 4294967296"),
        # Fixed values the optimizer itself refuses.
        (
            _set("optimizers.momentum.momentum=-3"),
            "[optimizers.momentum] momentum: torch.optim:SGD",
        ),
        (_set('optimizers.momentum.momentum="high"'), "[optimizers.momentum] momentum: torch"),
        # Keys a class would swallow in **kwargs, or take under a name we sample otherwise.
        (
            _set(
                "optimizers.madgrad.class='pytorch_optimizer:MADGRAD'",
                "optimizers.madgrad.learning_rate=[1e-3,1e-1]",
                "optimizers.madgrad.foo=[1.0,2.0]",
            ),
            "[optimizers.madgrad] unknown key 'foo' for pytorch_optimizer:MADGRAD",
        ),
        (_set("optimizers.lion.bta1=0.9"), "[optimizers.lion] unknown key 'bta1'"),
        (_set("optimizers.adam.betas=[0.5,0.9]"), "[optimizers.adam] betas: not a knob; write b"),
    ],
)
def test_bad_study_exits_2_and_writes_nothing(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.startswith("tuner: error: ") and message in error
    assert not default_storage_path().exists()


def test_invalid_toml_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\n[workload\n")
    assert main(["run", str(bad)]) == 2
    assert "invalid TOML" in capsys.readouterr().err
    assert not default_storage_path().exists()


def test_a_study_file_that_is_not_utf8_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(QUICKSTART.read_text().replace("quickstart", "caf\u00e9").encode("latin-1"))
    assert main(["run", str(latin1)]) == 2
    assert f"{latin1}: not UTF-8 text (byte 0xe9" in capsys.readouterr().err
    assert not default_storage_path().exists()


def test_reading_commands_never_create_a_database(tmp_path: Path) -> None:
    """best, status, report and worker on a SQLite file that does not exist: exit 2, and
    neither the file nor its folders appear."""
    missing = tmp_path / "not" / "there" / "studies.db"
    for command in (["best"], ["status"], ["report", "--out", str(tmp_path / "r")], ["worker"]):
        done = _tuner(command[0], "quickstart", *command[1:], "--storage", str(missing), cwd=ROOT)
        assert done.returncode == 2, done.stderr
        assert f"no study named 'quickstart': {missing} does not exist" in done.stderr
        assert not (tmp_path / "not").exists() and not (tmp_path / "r").exists()


def test_unreachable_storage_exits_2_with_password_masked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = "postgresql+psycopg://alice:hunter2@127.0.0.1:1/nowhere"
    assert main(["run", str(QUICKSTART), "--storage", url]) == 2
    error = capsys.readouterr().err
    assert "cannot reach storage" in error and "127.0.0.1:1" in error
    assert "hunter2" not in error and "***" in error


def test_malformed_storage_url_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["best", "quickstart", "--storage", "nosuchdb+driver://x"]) == 2
    assert "tuner: error:" in capsys.readouterr().err


def test_sqlite_with_a_cluster_address_is_refused_naming_postgres(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", str(QUICKSTART), "--ray-address", "10.0.0.1:6379"]) == 2
    assert "PostgreSQL" in capsys.readouterr().err


def test_best_of_unknown_study_lists_the_studies(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    optuna.create_study(study_name="present", storage=sqlite_url)
    assert main(["best", "absent", "--storage", sqlite_url]) == 2
    error = capsys.readouterr().err
    assert "no study named 'absent'" in error and "present" in error


def test_worker_and_status_of_an_unknown_study_exit_2(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in ("worker", "status"):
        assert main([command, "nope", "--storage", sqlite_url]) == 2
        assert "no study named 'nope'" in capsys.readouterr().err


def test_status_shows_states_best_and_throughput(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tuner.execution.worker import run_worker
    from tuner.spec import load_spec
    from tuner.storage.rdb import open_storage
    from tuner.study import lifecycle as studies

    spec = load_spec(QUICKSTART, ["budget.trials=6", "budget.epochs=2"])
    studies.create_or_resume(spec, open_storage(sqlite_url))
    run_worker(spec, sqlite_url)
    study = optuna.load_study(study_name="quickstart", storage=sqlite_url)
    assert main(["status", "quickstart", "--storage", sqlite_url]) == 0
    out = capsys.readouterr().out
    assert "quickstart: 6 trials" in out and "throughput" in out
    assert f"{study.best_value:.5g}" in out


def test_reading_a_study_imports_neither_torch_nor_ray(sqlite_url: str) -> None:
    """`tuner best`, `tuner status` and `best_config()` only read: torch (two thirds of a
    start-up) and Ray load where a model trains, or `build_optimizer()` is called."""
    from tuner.execution.worker import run_worker
    from tuner.spec import load_spec
    from tuner.storage.rdb import open_storage
    from tuner.study import lifecycle as studies

    spec = load_spec(QUICKSTART, ["budget.trials=3", "budget.epochs=1"])
    studies.create_or_resume(spec, open_storage(sqlite_url))
    run_worker(spec, sqlite_url)
    for command in ("best", "status"):
        lines, errors = _main_in_a_fresh_process([command, "quickstart", "--storage", sqlite_url])
        code, loaded = lines[-1].split(" ", 1)
        assert code == "0" and "torch" not in loaded and "ray" not in loaded, (command, errors)
    probe = (
        f"import sys, tuner; tuner.best_config('quickstart', storage={sqlite_url!r})\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray'}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.stdout.splitlines()[-1] == "[]", done.stderr


def test_best_table_and_summary_hints_show_brackets_and_the_storage(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from rich.console import Console

    from tuner import best_config
    from tuner.execution.worker import run_worker
    from tuner.spec import load_spec
    from tuner.storage.rdb import open_storage
    from tuner.study import lifecycle as studies
    from tuner.views.display import print_summary, tuner_command

    overrides = ["budget.trials=4", "budget.epochs=2", "pruner.name='none'"]
    spec = load_spec(QUICKSTART, [*overrides, "search.optimizers=['momentum', 'nesterov']"])
    studies.create_or_resume(spec, open_storage(sqlite_url))
    run_worker(spec, sqlite_url)
    assert main(["best", "quickstart", "--storage", sqlite_url]) == 0
    # rich must not take the library class for markup and swallow it.
    assert f"[{best_config('quickstart', storage=sqlite_url).target}]" in capsys.readouterr().out

    study = optuna.load_study(study_name="quickstart", storage=sqlite_url)
    console = Console(record=True, width=200)
    print_summary(console, study, sqlite_url)
    out = console.export_text()
    assert f"tuner best quickstart --storage {sqlite_url}" in out
    assert f"tuner dashboard --storage {sqlite_url}" in out and "optuna-dashboard" not in out
    # On the embedded default database, the bare commands find the study.
    console = Console(record=True, width=200)
    print_summary(console, study, f"sqlite:///{default_storage_path()}")
    out = console.export_text()
    tuner = tuner_command()  # `tuner`, or the script's path where PATH does not find it
    assert f"{tuner} best quickstart\n" in out
    assert out.rstrip().endswith(f"dashboard: {tuner} dashboard")
    # A password never shows; the URL is quoted for the shell.
    console = Console(record=True, width=200)
    print_summary(console, study, "postgresql+psycopg://alice:hunter2@db/tuner")
    out = console.export_text()
    assert "hunter2" not in out
    assert "tuner dashboard --storage 'postgresql+psycopg://alice:***@db/tuner'" in out


def test_report_on_an_empty_or_unknown_study_exits_2(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    optuna.create_study(study_name="empty", storage=sqlite_url)
    out = tmp_path / "report"
    assert main(["report", "empty", "--storage", sqlite_url, "--out", str(out)]) == 2
    assert "no completed trial" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    assert main(["report", "absent", "--storage", sqlite_url, "--out", str(out)]) == 2
    assert "no study named 'absent'" in capsys.readouterr().err


def test_missing_dataset_exits_2_naming_the_files_and_writes_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    study = ROOT / "studies" / "mnist_cnn.toml"
    assert main(["run", str(study)]) == 2
    error = capsys.readouterr().err
    assert "dataset 'mnist' is missing 4 of its 4 files" in error
    assert "train-images-idx3-ubyte" in error and "tuner data fetch mnist" in error
    assert not default_storage_path().exists()


def test_worker_on_a_study_tuner_did_not_create_exits_2(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    optuna.create_study(study_name="foreign", storage=sqlite_url)
    assert main(["worker", "foreign", "--storage", sqlite_url]) == 2
    assert "was not created by `tuner run`" in capsys.readouterr().err


def test_a_worker_added_by_hand_is_seeded_by_its_index_not_its_process(
    tmp_path: Path, make_spec: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """The same `tuner worker --index` on the same study draws the same trials; another index
    draws others (under the process id both would be seeded alike here)."""
    from tuner.storage.rdb import open_storage
    from tuner.study import lifecycle as studies

    spec = make_spec(name="by-hand", budget={"trials": 3, "epochs": 1})

    def drawn(copy: str, *index: str) -> list[dict]:
        url = f"sqlite:///{tmp_path / f'{copy}.db'}"
        studies.create_or_resume(spec, open_storage(url))
        assert main(["worker", "by-hand", "--storage", url, *index]) == 0
        return [t.params for t in optuna.load_study(study_name="by-hand", storage=url).trials]

    assert drawn("first", "--index", "1") == drawn("again", "--index", "1")
    assert drawn("other", "--index", "1") != drawn("default")  # index 0
    with pytest.raises(SystemExit) as exit_info:
        main(["worker", "by-hand", "--index", "-1"])
    assert exit_info.value.code == 2
    assert "--index: expected 0, 1, 2" in capsys.readouterr().err


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run"])
    assert exit_info.value.code == 2


HEAVY_LIBRARIES = ("torch", "optuna", "sqlalchemy", "pydantic", "ray", "matplotlib")


def _main_in_a_fresh_process(args: list[str]) -> tuple[list[str], str]:
    """`tuner ARGS` in a new interpreter: what it printed, its last line being its exit code
    and the heavy libraries it loaded (``0 ['optuna']``); and what it wrote to stderr."""
    probe = (
        "import sys\n"
        "from tuner.cli import main\n"
        "try:\n"
        f"    code = main({args!r})\n"
        "except SystemExit as stop:\n"
        "    code = stop.code\n"
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY_LIBRARIES!r}))\n"
        "print(code, loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    return result.stdout.splitlines(), result.stderr


@pytest.mark.parametrize(
    "args",
    [["--help"], ["run", "--help"], ["run"], ["best"], ["dashboard", "--port", "x"]],
)
def test_help_and_usage_errors_import_no_heavy_library(args: list[str]) -> None:
    """`tuner --help` and argparse's errors answer before torch, Optuna or SQLAlchemy load."""
    lines, errors = _main_in_a_fresh_process(args)
    code = 0 if "--help" in args else 2
    assert lines[-1] == f"{code} []", errors


def test_python_dash_m_tuner_is_the_tuner_command() -> None:
    """`python -m tuner` answers as `tuner` does, for environments whose scripts are off PATH."""
    result = subprocess.run(
        [sys.executable, "-m", "tuner", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: tuner ") and " run " in result.stdout


def test_import_tuner_is_cheap_and_its_public_names_still_resolve() -> None:
    probe = (
        "import sys, tuner\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY_LIBRARIES!r})))\n"
        "print(all(callable(getattr(tuner, name)) for name in tuner.__all__))\n"
        "print(tuner.best_config.__module__, tuner.load_spec.__module__, tuner.run.__module__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.splitlines() == ["[]", "True", "tuner.study.best tuner.spec tuner.runner"]


@pytest.mark.workers
@pytest.mark.slow
def test_quickstart_end_to_end_on_the_embedded_default(tmp_path: Path) -> None:
    """`tuner run` on the default SQLite file, then the best config from another directory."""
    elsewhere = tmp_path / "other-project"
    elsewhere.mkdir()
    run = _tuner("run", str(QUICKSTART), "--trials", "16", cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "Best trial per optimizer" in run.stdout
    assert str(default_storage_path()) in run.stdout

    storage = f"sqlite:///{default_storage_path()}"
    study = optuna.load_study(study_name="quickstart", storage=storage)
    states = [trial.state for trial in study.trials]
    assert len(states) == 16
    assert optuna.trial.TrialState.RUNNING not in states
    assert optuna.trial.TrialState.WAITING not in states

    best = _tuner("best", "quickstart", "--json", cwd=elsewhere)
    assert best.returncode == 0, best.stderr
    config = json.loads(best.stdout)
    assert config["value"] == pytest.approx(study.best_value)
    assert config["trial_number"] == study.best_trial.number

    code = "import tuner; c = tuner.best_config('quickstart'); print(c.optimizer, c.trial_number)"
    printed = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True, check=True
    ).stdout.split()
    assert printed == [study.best_trial.params["optimizer"], str(study.best_trial.number)]

    # Running again resumes: the budget is already spent, so no trial is added.
    again = _tuner("run", str(QUICKSTART), "--trials", "16", cwd=ROOT)
    assert again.returncode == 0, again.stderr
    assert len(optuna.load_study(study_name="quickstart", storage=storage).trials) == 16


def _finished(
    start: datetime.datetime, seconds: float, value: float, **attrs: dict
) -> optuna.trial.FrozenTrial:
    """A COMPLETE trial that started at `start` and ended `seconds` later."""
    return optuna.trial.FrozenTrial(
        number=0,
        trial_id=0,
        state=optuna.trial.TrialState.COMPLETE,
        value=value,
        values=None,
        datetime_start=start,
        datetime_complete=start + datetime.timedelta(seconds=seconds),
        params={},
        distributions={},
        user_attrs=attrs.get("user_attrs", {}),
        system_attrs=attrs.get("system_attrs", {}),
        intermediate_values={},
    )


def test_status_throughput_spans_the_trials_and_shows_retries(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two trials of 10 s that ended 10 ms apart ran at 0.2 trials/s, not 100; a retry (a
    trial whose worker died, re-run) is listed with the trial it retries."""
    study = optuna.create_study(study_name="paced", storage=sqlite_url)
    start = datetime.datetime.now() - datetime.timedelta(minutes=5)
    study.add_trial(_finished(start, 10.0, 1.0))
    study.add_trial(_finished(start, 10.01, 2.0, system_attrs={"failed_trial": 0}))
    assert main(["status", "paced", "--storage", sqlite_url]) == 0
    out = capsys.readouterr().out
    assert "throughput: 0.2 trials/s (2 finished in 10 s), 0 in the last minute" in out
    assert "retries: 1 (trial 1 retries trial 0)" in out


def test_summary_at_80_columns_keeps_settings_whole_and_knobs_near_1_distinct(
    sqlite_url: str,
) -> None:
    from rich.console import Console

    from tuner.config import TrainingConfig
    from tuner.views.display import print_summary

    study = optuna.create_study(study_name="narrow", storage=sqlite_url)
    start = datetime.datetime.now()
    for optimizer, beta2 in (("adam", 0.99977), ("adamw", 0.9999)):
        config = TrainingConfig(
            optimizer=optimizer,
            target=f"torch.optim:{optimizer.title()}",
            learning_rate=0.00123,
            weight_decay=0.0042,
            hyperparameters={"beta1": 0.9, "beta2": beta2, "eps": 1.23e-10},
            schedule="warmup_cosine",
            max_grad_norm=1.5,
            batch_size=128,
        )
        study.add_trial(_finished(start, 1.0, beta2, user_attrs={"config": config.to_dict()}))
    console = Console(record=True, width=80)
    print_summary(console, study, sqlite_url)
    text = console.export_text()
    # The table and the best line fit; the storage lines are not wrapped (copyable paths).
    lines = text[: text.index("Study narrow lives in")].splitlines()
    assert max(len(line) for line in lines) <= 80
    words = " ".join(lines).split()
    for setting in ("beta2=0.99977,", "beta2=0.9999,", "eps=1.23e-10,", "warmup_cosine,"):
        assert setting in words, setting


def test_version_and_a_closed_pipe(tmp_path: Path) -> None:
    """`tuner --version`; `tuner best --json | head` ends quietly when head has read enough."""
    version = _tuner("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("tuner 0.")

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    from tuner.execution.worker import run_worker
    from tuner.spec import load_spec
    from tuner.storage.rdb import open_storage
    from tuner.study import lifecycle as studies

    spec = load_spec(QUICKSTART, ["budget.trials=1", "budget.epochs=1"])
    studies.create_or_resume(spec, open_storage(url))
    run_worker(spec, url)
    reader = subprocess.Popen(
        [sys.executable, "-m", "tuner.cli", "best", "quickstart", "--json", "--storage", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reader.stdout.close()  # the reader is gone before the first line is written
    stderr = reader.stderr.read()
    assert reader.wait(timeout=120) == 1
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


@pytest.mark.workers
def test_gpus_the_machine_lacks_exit_2_before_any_write(tmp_path: Path) -> None:
    done = _tuner("run", str(QUICKSTART), "--set", "execution.gpus_per_trial=2", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    # (Ray's token warning before it is the "infra" part of issue 13.)
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "tuner: error: [execution] gpus_per_trial = 2, but this machine has 0 GPUs: set 0 "
        "(CPU only) or 'auto'"
    )
    assert not default_storage_path().exists()  # a refusal writes nothing, not even the file


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--set", "execution.cpus_per_trial=4096"],
            f"[execution] cpus_per_trial = 4096, but this machine has {usable_cpus()} CPUs: set "
            f"at most {usable_cpus()}",
        ),
        (
            ["--set", "execution.backend='local'", "--ray-address", "127.0.0.1:1"],
            "backend 'local' runs on this machine only: leave ray_address out, or set backend "
            "= 'ray' to run on that cluster",
        ),
    ],
    ids=["more-cpus-than-the-machine", "local-with-a-cluster"],
)
def test_local_workers_the_machine_cannot_hold_exit_2_before_any_write(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    done = _tuner("run", str(QUICKSTART), *arguments, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    (last,) = done.stderr.strip().splitlines()[-1:]
    assert last.startswith("tuner: error: ") and message in last, last
    assert not default_storage_path().exists()  # a refusal writes nothing, not even the file


@pytest.mark.postgres
def test_a_ray_address_that_does_not_answer_exits_2_before_any_write(
    postgres_url: str, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as closed:  # a loopback port that nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    name = f"noray-{os.getpid()}"
    done = _tuner(
        "run",
        str(QUICKSTART),
        *("--storage", postgres_url, "--ray-address", f"127.0.0.1:{port}"),
        *("--set", f"name='{name}'"),
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"tuner: error: [execution] ray_address 127.0.0.1:{port}: no Ray")
    assert name not in optuna.get_all_study_names(postgres_url)


@pytest.mark.workers
@pytest.mark.slow
def test_timeout_counts_from_the_first_trial_and_a_run_with_no_result_exits_1(
    tmp_path: Path,
) -> None:
    """A 1 s wall-time budget is not spent on Ray's start-up (once it ended a study with no
    trial, exit 0); a run whose trials all fail says so and exits 1."""
    timed = _tuner("run", str(QUICKSTART), "--timeout", "1", "--trials", "1000", cwd=tmp_path)
    assert timed.returncode == 0, timed.stderr
    storage = f"sqlite:///{default_storage_path()}"
    trials = optuna.load_study(study_name="quickstart", storage=storage).trials
    assert 0 < len(trials) < 1000 and all(trial.state.is_finished() for trial in trials)

    broken = (
        "workload.name='tests.workloads.factories:broken'",
        "metric='loss'",
        "direction='minimize'",
    )
    failing = _tuner(*_set("name='fails'", *broken), "--trials", "2", cwd=ROOT)
    assert failing.returncode == 1, failing.stderr
    assert "No trial completed" in failing.stdout and "broken on purpose" in failing.stdout


@pytest.mark.workers
def test_a_finished_study_run_again_says_so_without_starting_ray(tmp_path: Path) -> None:
    """Re-running a study whose budget is spent has nothing to train: it says so and prints
    the summary once, without Ray (which costs the most of a run's start)."""
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    first = _tuner("run", str(QUICKSTART), "--trials", "3", "--storage", storage, cwd=ROOT)
    assert first.returncode == 0, first.stderr
    lines, errors = _main_in_a_fresh_process(
        ["run", str(QUICKSTART), "--trials", "3", "--storage", storage]
    )
    code, loaded = lines[-1].split(" ", 1)
    assert code == "0" and "ray" not in loaded, errors
    assert lines[0] == (
        "quickstart is finished: 3 of 3 trials; give it a larger budget (--trials N) to run more"
    )
    assert sum(line.startswith("quickstart: 3 trials: ") for line in lines) == 1
    trials = optuna.load_study(study_name="quickstart", storage=storage).trials
    assert len(trials) == 3  # nothing was claimed
