"""Script trials (``[workload] command``) started by the worker's fork server
(tuner.execution.script_server): real workers, real forked and exec'd processes.

A Python script runs in a child forked from a server that has imported torch and tuner, with
the argv, sys.path, working directory, environment and torch threads a fresh ``python``
would give it; its exit status and uncaught exceptions are read as python's. Any other
command is exec'd, a fresh program. (Pruning, failures with their stderr and Ctrl-C or
SIGKILL ending the script's process tree are in test_user_code.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.execution.test_user_code import (
    function_study,
    project,
    run_here,
    script_spec,
    trials_of,
)
from tests.processes import alive
from tests.test_faults import wait_for
from tuner.spec import load_spec
from tuner.storage.rdb import open_storage
from tuner.study import lifecycle as studies

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the fork server is Linux's"
)

#: A script that records what it found when it started, then reports its trial number.
#: `xml.dom.minidom` (which neither torch nor tuner imports) and `helper` (a module beside
#: the script) are imported by trial 0 only: trial 1 shows what the server kept of them.
PROBE = """
    import json
    import os
    import sys
    import threading

    found = {
        "torch_loaded": "torch" in sys.modules,
        "minidom_loaded": "xml.dom.minidom" in sys.modules,
        "helper_loaded": "helper" in sys.modules,
        "fresh_trial": "tuner.execution.script" in sys.modules
        and sys.modules["tuner.execution.script"]._current is None,
        "threads": sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None,
        "python_threads": threading.active_count(),
        "pid": os.getpid(),
        "group": os.getpgid(0),
        "parent": os.getppid(),
        "cwd": os.getcwd(),
        "argv": sys.argv,
        "path0": sys.path[0],
        "name": __name__,
    }
    import tuner

    trial = tuner.current_trial()
    if trial.number == 0:
        import xml.dom.minidom
        import helper
    with open(f"found_{trial.number}.json", "w") as out:
        json.dump(found, out)
    trial.report({"val_loss": float(trial.number)}, 1)
    """


def found(folder: Path, number: int) -> dict:
    return json.loads((folder / f"found_{number}.json").read_text())


def test_a_python_script_is_forked_from_the_workers_server_as_python_would_run_it(
    tmp_path: Path, sqlite_url: str
) -> None:
    folder = tmp_path / "project"
    study = function_study("forked", "x", "[budget]\ntrials = 2\nepochs = 1\n")
    study = study.replace('name = "x:train"', 'command = ["python", "probe.py", "--lr", "0.1"]')
    spec = load_spec(project(folder, {"probe.py": PROBE, "helper.py": "VALUE = 1\n"}, study))
    trials = run_here(spec, sqlite_url)  # one torch thread
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 2
    first, second = found(folder, 0), found(folder, 1)
    for seen in (first, second):
        # Forked: torch was there before the script imported anything (a fresh interpreter
        # has not imported it), from a server of this worker's that never ran a trial.
        assert seen["torch_loaded"] and seen["fresh_trial"]
        assert seen["parent"] != os.getpid() and seen["group"] == seen["pid"] != os.getpgid(0)
        assert seen["threads"] == 1 and seen["python_threads"] == 1
        assert seen["cwd"] == str(folder) and seen["path0"] == str(folder)
        assert seen["argv"] == [str(folder / "probe.py"), "--lr", "0.1"]
        assert seen["name"] == "__main__"
    assert second["parent"] == first["parent"]  # the same server, both trials
    assert not alive(first["parent"])  # stopped with the worker
    # Between trials the server imported what trial 0's script did, but not its own module.
    assert not first["minidom_loaded"] and second["minidom_loaded"]
    assert not first["helper_loaded"] and not second["helper_loaded"]


def test_a_scripts_exit_status_and_uncaught_exception_are_read_as_pythons(
    tmp_path: Path, sqlite_url: str
) -> None:
    script = """
        import sys
        import tuner

        trial = tuner.current_trial()
        print(f"trial {trial.number}")  # block-buffered, written at exit
        trial.report({"val_loss": 0.5}, 1)
        if trial.number == 1:
            raise SystemExit(3)
        if trial.number == 2:
            def load():
                raise ValueError("no such batch")

            load()
        if trial.number == 3:
            sys.exit("giving up: no data")
        """
    spec = script_spec(tmp_path, "exits", script, "[budget]\ntrials = 4\nepochs = 1\n")
    ok, status, raised, message = run_here(spec, sqlite_url)
    assert ok.state == TrialState.COMPLETE and ok.value == 0.5
    assert status.state == raised.state == message.state == TrialState.FAIL
    assert status.user_attrs["fail_reason"] == (
        "ScriptFailed: python train.py exited with status 3; stderr ends:\n(no output on stderr)"
    )
    reason = raised.user_attrs["fail_reason"]
    assert "python train.py exited with status 1; stderr ends:\nTraceback" in reason
    assert reason.endswith("ValueError: no such batch")
    assert f'File "{tmp_path / "train.py"}", line' in reason and "in load" in reason
    assert "runpy" not in reason and "script_server" not in reason  # the script's frames only
    assert message.user_attrs["fail_reason"].endswith("status 1; stderr ends:\ngiving up: no data")
    from optuna.artifacts import download_artifact, get_all_artifact_meta

    from tuner.storage.artifacts import artifact_store

    storage = open_storage(sqlite_url)
    (stdout,) = [
        m for m in get_all_artifact_meta(status, storage=storage) if "stdout" in m.filename
    ]
    copy = tmp_path / "stdout.txt"
    download_artifact(
        artifact_store=artifact_store(storage), artifact_id=stdout.artifact_id, file_path=str(copy)
    )
    assert copy.read_text() == "trial 1\n"


def test_a_module_runs_forked_and_other_commands_are_execd(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m`` is forked as ``python X.py`` is; ``python -u X.py`` (python with options)
    and a program are exec'd: fresh, without torch, in a group of their own all the same."""
    probe = """
        import json, os, sys
        seen = {"torch": "torch" in sys.modules, "argv": sys.argv, "path0": sys.path[0],
                "group": os.getpgid(0) == os.getpid()}
        import tuner

        trial = tuner.current_trial()
        json.dump(seen, open(f"seen_{os.environ['VARIANT']}.json", "w"))
        trial.report({"val_loss": 1.0}, 1)
        """
    files = {"probe.py": probe, "run.sh": f'#!/bin/sh\nexec {sys.executable} probe.py "$@"\n'}
    commands = {
        "module": '["python", "-m", "pkg.main", "a"]',
        "options": '["python", "-u", "probe.py", "b"]',
        "program": '["./run.sh", "c"]',
    }
    for variant, command in commands.items():
        folder = tmp_path / variant
        study = function_study(variant, "x", "[budget]\ntrials = 1\nepochs = 1\n")
        study = study.replace('name = "x:train"', f"command = {command}")
        spec_file = project(folder, files, study)
        (folder / "run.sh").chmod(0o755)
        (folder / "pkg").mkdir()
        (folder / "pkg" / "__init__.py").write_text("")
        (folder / "pkg" / "main.py").write_text(textwrap.dedent(probe))
        monkeypatch.setenv("VARIANT", variant)  # the worker's environment is the script's
        (trial,) = run_here(load_spec(spec_file), sqlite_url)
        assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("fail_reason")
    seen = {
        variant: json.loads((tmp_path / variant / f"seen_{variant}.json").read_text())
        for variant in commands
    }
    assert seen["module"] == {
        "torch": True,
        "argv": [str(tmp_path / "module" / "pkg" / "main.py"), "a"],
        "path0": str(tmp_path / "module"),
        "group": True,
    }
    assert seen["options"] == {
        "torch": False,
        "argv": ["probe.py", "b"],
        "path0": str(tmp_path / "options"),
        "group": True,
    }
    assert seen["program"] == {
        "torch": False,
        "argv": ["probe.py", "c"],
        "path0": str(tmp_path / "program"),
        "group": True,
    }


def test_a_module_that_starts_a_thread_when_imported_is_not_kept(
    tmp_path: Path,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Forking a process with a Python thread is unsafe: a server whose learned imports
    started one starts afresh and learns no more."""
    library = tmp_path / "library"  # found through the worker's PYTHONPATH: not the user's own
    library.mkdir()
    (library / "threaded_library.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
    )
    monkeypatch.setenv("PYTHONPATH", f"{library}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    script = PROBE.replace("import helper", "import threaded_library")
    folder = tmp_path / "project"
    study = function_study("threaded", "x", "[budget]\ntrials = 3\nepochs = 1\n")
    study = study.replace('name = "x:train"', 'command = ["python", "probe.py"]')
    spec = load_spec(project(folder, {"probe.py": script}, study))
    trials = run_here(spec, sqlite_url)
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 3
    first, second, third = (found(folder, number) for number in range(3))
    for seen in (second, third):  # the server is the same process, started afresh
        assert seen["parent"] == first["parent"] and seen["torch_loaded"]
        assert seen["python_threads"] == 1 and not seen["minidom_loaded"]
    assert "starts afresh and no longer keeps what scripts import" in capfd.readouterr().err


def test_a_killed_server_fails_its_trial_and_the_next_trial_gets_a_new_one(
    tuner_process: Callable[..., subprocess.Popen], tmp_path: Path, sqlite_url: str
) -> None:
    script = """
        import os, time
        import tuner

        trial = tuner.current_trial()
        with open(f"server_{trial.number}.txt", "w") as out:
            out.write(str(os.getppid()))
        if trial.number == 0:
            time.sleep(600)
        trial.report(1.0, 1)
        """
    spec = script_spec(tmp_path, "server-killed", script, "[budget]\ntrials = 2\nepochs = 1\n")
    studies.create_or_resume(spec, open_storage(sqlite_url))
    worker = tuner_process("worker", spec.name, "--storage", sqlite_url)
    first = tmp_path / "server_0.txt"
    wait_for(lambda: first.exists() and first.read_text(), 60, "the first trial to start")
    os.kill(int(first.read_text()), signal.SIGKILL)
    assert worker.wait(timeout=120) == 0, worker.stderr.read()
    killed, rerun = trials_of(spec, sqlite_url)
    assert killed.state == TrialState.FAIL
    assert "python train.py was killed by signal 9" in killed.user_attrs["fail_reason"]
    assert rerun.state == TrialState.COMPLETE
    assert (tmp_path / "server_1.txt").read_text() != first.read_text()
