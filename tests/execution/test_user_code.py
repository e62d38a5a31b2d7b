"""The user's own training code: a function beside the study file, and a script per trial.

Each test writes a small project (a study file and its training code) into its own folder and
runs it for real: tuner's worker loop, real Ray workers, real `tuner` processes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

import tuner
from tests.processes import alive
from tests.test_faults import assert_finished_with_retries, running_by, wait_for
from tuner.cli import main
from tuner.execution.output import Tail
from tuner.execution.worker import run_worker
from tuner.runner import with_overrides
from tuner.spec import StudySpec, load_spec
from tuner.storage.rdb import open_storage
from tuner.study import lifecycle as studies
from tuner.study.note import study_note
from tuner.study.results import is_result

#: A linear regression trained with the trial's optimizer; the module name is a placeholder,
#: made unique per test (Python caches imported modules by name, in tests and in Ray workers).
TRAIN_FUNCTION = """
import time

import torch


def train(trial):
    x = torch.randn(128, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5])
    model = torch.nn.Linear(3, 1)
    optimizer = trial.config.build_optimizer(model.parameters())
    scheduler = trial.config.build_scheduler(optimizer, steps_per_epoch=4, epochs=trial.epochs)
    for epoch in range(1, trial.epochs + 1):
        for batch in torch.arange(128).split(32):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[batch]).squeeze(1), y[batch])
            loss.backward()
            optimizer.step()
            scheduler.step()
        time.sleep(trial.options.get("sleep", 0.0))
        with torch.no_grad():
            val = torch.nn.functional.mse_loss(model(x).squeeze(1), y).item()
        trial.report({"val_loss": val, "train_loss": loss.item(), "seed": trial.seed}, epoch)
"""


def project(folder: Path, files: dict[str, str], study: str) -> Path:
    """Write a study file and its code into `folder`; return the study file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    (folder / "study.toml").write_text(textwrap.dedent(study))
    return folder / "study.toml"


def function_study(name: str, module: str, extra: str = "") -> str:
    return f"""
        name = "{name}"
        metric = "val_loss"
        direction = "minimize"
        [workload]
        name = "{module}:train"
        [search]
        optimizers = ["sgd", "adam"]
        weight_decay = "off"
        {extra}
        """


def script_spec(folder: Path, name: str, script: str, extra: str) -> StudySpec:
    """A study whose trials run ``python train.py``, with `script` as train.py."""
    study = function_study(name, "x", extra)
    study = study.replace('name = "x:train"', 'command = ["python", "train.py"]')
    return load_spec(project(folder, {"train.py": script}, study))


def unique(stem: str) -> str:
    return f"{stem}_{uuid.uuid4().hex[:8]}"


def trials_of(spec: StudySpec, url: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=spec.name, storage=open_storage(url)).get_trials()


def run_here(spec: StudySpec, url: str) -> list[FrozenTrial]:
    """Create the study and run one worker in this process until the budget is spent, with
    one torch thread (two threads per trial on a loaded 2-core machine are many times slower)."""
    studies.create_or_resume(spec, open_storage(url))
    run_worker(spec, url, threads=1)
    trials = trials_of(spec, url)
    assert all(trial.state.is_finished() for trial in trials), "a trial was left RUNNING"
    return trials


@pytest.mark.workers
def test_a_function_beside_the_study_file_runs_on_two_ray_workers(
    local_ray: None,
    storage_url: str,
    study_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = unique("train")
    study_file = project(
        tmp_path / "project",
        {f"{module}.py": TRAIN_FUNCTION},
        function_study(study_name, module)
        + "[budget]\ntrials = 6\nepochs = 3\n[pruner]\nname = 'none'\n"
        + "[execution]\nworkers = 2\n",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # found beside the study file, not in the working directory

    tuner.run(with_overrides(load_spec(study_file), storage=storage_url))

    trials = optuna.load_study(study_name=study_name, storage=open_storage(storage_url)).trials
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.user_attrs["worker"].rsplit("-", 1)[-1] for t in trials} <= {"0", "1"}
    for trial in trials:
        curve = trial.user_attrs["curve"]
        assert [point["epoch"] for point in curve] == [1, 2, 3]
        # The value is the last report, and the function saw the trial's own seed.
        assert trial.value == curve[-1]["val_loss"] == trial.intermediate_values[3]
        assert curve[-1]["seed"] == trial.user_attrs["seed"]
    best = tuner.best_config(study_name, storage=storage_url)
    assert best.value == min(t.value for t in trials)


def test_report_prunes_a_function_trial_and_a_script_trial(tmp_path: Path, sqlite_url: str) -> None:
    """Trial 0 reports low values; later ones report higher, and the median pruner stops them
    after their first report: a function returns on TrialPruned, a script exits on it."""
    module = unique("worse")
    code = """
        def train(trial):
            for epoch in range(1, trial.epochs + 1):
                trial.report({"val_loss": 1.0 + trial.number}, epoch)
        """
    script = """
        import tuner

        trial = tuner.current_trial()
        for epoch in range(1, trial.epochs + 1):
            trial.report(1.0 + trial.number, epoch)
        """
    pruning = "[budget]\ntrials = 2\nepochs = 3\n[pruner]\nname = 'median'\n"
    pruning += "n_startup_trials = 1\nn_warmup_steps = 0\n"
    function_file = project(
        tmp_path / "function", {f"{module}.py": code}, function_study("pruned-fn", module, pruning)
    )
    script_study = script_spec(tmp_path / "script", "pruned-script", script, pruning)
    for spec in (load_spec(function_file), script_study):
        first, second = run_here(spec, sqlite_url)
        assert first.state == TrialState.COMPLETE and first.value == 1.0
        assert second.state == TrialState.PRUNED, second.user_attrs.get("fail_reason")
        assert second.intermediate_values == {1: 2.0}
        assert len(second.user_attrs["curve"]) == 1


def test_bad_reports_fail_their_trial_with_the_exact_reason(
    tmp_path: Path, sqlite_url: str
) -> None:
    module = unique("bad")
    code = """
        import math

        def train(trial):
            if trial.number == 0:
                trial.report({"accuracy": 0.5}, 1)  # the study optimises val_loss
            if trial.number == 1:
                return None  # never reported
            if trial.number == 2:
                trial.report({"val_loss": 1.0}, 1)
                trial.report({"val_loss": math.nan}, 2)
            if trial.number == 4:
                return "hello"
            if trial.number == 5:
                trial.suggest_float("learning_rate", 0.1, 1.0)  # tuner's own name
            return {"val_loss": 0.25}
        """
    spec = load_spec(
        project(
            tmp_path,
            {f"{module}.py": code},
            function_study("bad-reports", module, "[budget]\ntrials = 6\nepochs = 2\n"),
        )
    )
    wrong, silent, diverged, returned, text, reserved = run_here(spec, sqlite_url)
    assert wrong.state == TrialState.FAIL
    assert (
        "reported accuracy in epoch 1, not the study's metric 'val_loss'"
        in (wrong.user_attrs["fail_reason"])
    )
    assert silent.state == TrialState.FAIL
    assert "never reported the study's metric 'val_loss'" in silent.user_attrs["fail_reason"]
    assert "diverged in epoch 2" in diverged.user_attrs["diverged"]  # never a result
    assert not is_result(diverged)
    assert returned.state == TrialState.COMPLETE and returned.value == 0.25
    assert text.state == TrialState.FAIL
    assert text.user_attrs["fail_reason"] == "TypeError: train() returned 'hello', not a number"
    assert reserved.state == TrialState.FAIL
    assert (
        "trial.suggest_*('learning_rate'): one of tuner's own"
        in (reserved.user_attrs["fail_reason"])
    )


def test_a_failing_script_is_a_fail_with_its_stderr_and_keeps_its_output(
    tmp_path: Path, sqlite_url: str
) -> None:
    script = """
        import sys
        import tuner

        trial = tuner.current_trial()
        print(f"training with {trial.config.optimizer}")
        trial.report({"val_loss": 0.5}, 1)
        if trial.number == 1:
            print("out of memory, says the script", file=sys.stderr)
            sys.exit(3)
        """
    spec = script_spec(tmp_path, "failing-script", script, "[budget]\ntrials = 2\nepochs = 1\n")
    assert "`python train.py`: a command run once per trial" in study_note(spec)
    ok, failed = run_here(spec, sqlite_url)
    assert ok.state == TrialState.COMPLETE and ok.value == 0.5
    assert failed.state == TrialState.FAIL
    reason = failed.user_attrs["fail_reason"]
    assert "python train.py exited with status 3" in reason
    assert reason.endswith("out of memory, says the script")
    storage = open_storage(sqlite_url)
    from optuna.artifacts import get_all_artifact_meta

    names = {meta.filename for meta in get_all_artifact_meta(ok, storage=storage)}
    assert names >= {"trial_0_stdout.txt"}
    failed_names = {meta.filename for meta in get_all_artifact_meta(failed, storage=storage)}
    assert {"trial_1_stdout.txt", "trial_1_stderr.txt"} <= failed_names


def test_a_functions_output_is_kept_and_ends_its_failure(tmp_path: Path, sqlite_url: str) -> None:
    module = unique("noisy")
    code = """
        import sys

        def train(trial):
            print(f"training trial {trial.number}")
            print("a warning on stderr", file=sys.stderr)
            if trial.number == 1:
                print("loss went up, giving up")
                raise RuntimeError("gave up")
            return 0.5
        """
    study = function_study("noisy", module, "[budget]\ntrials = 2\nepochs = 1\n")
    ok, failed = run_here(load_spec(project(tmp_path, {f"{module}.py": code}, study)), sqlite_url)
    assert ok.state == TrialState.COMPLETE and failed.state == TrialState.FAIL
    reason = failed.user_attrs["fail_reason"]
    assert reason.startswith("RuntimeError: gave up\noutput ends:\n")
    assert reason.endswith("training trial 1\na warning on stderr\nloss went up, giving up")
    from optuna.artifacts import download_artifact, get_all_artifact_meta

    from tuner.storage.artifacts import artifact_store

    storage = open_storage(sqlite_url)
    kept = {meta.filename: meta for meta in get_all_artifact_meta(ok, storage=storage)}
    assert set(kept) == {"trial_0_stdout.txt", "trial_0_stderr.txt"}
    copy = tmp_path / "stdout.txt"
    download_artifact(
        artifact_store=artifact_store(storage),
        artifact_id=kept["trial_0_stdout.txt"].artifact_id,
        file_path=str(copy),
    )
    assert copy.read_text() == "training trial 0\n"


def test_kept_output_is_bounded_to_its_tail() -> None:
    tail = Tail(limit=10)
    for chunk in ("0123456789", "abc", "de", "fghij"):
        tail.add(chunk)
    assert tail.text() == "abcdefghij" and tail.cut
    short = Tail(limit=10)
    short.add("abc")
    assert short.text() == "abc" and not short.cut


@pytest.mark.parametrize(
    "workload, files, message",
    [
        ('name = "nowhere:train"', {}, "no module 'nowhere' in {folder}, "),
        (
            'name = "{module}:train"',
            {"{module}.py": "def train(a, b, c):\n    pass\n"},
            "takes (a, b, c); a training function takes (trial)",
        ),
        (
            'name = "{module}:train"',
            {"{module}.py": "def train(trial, extra):\n    pass\n"},
            "takes (trial, extra); a training function takes (trial), a workload factory "
            "(options, context)",
        ),
        (
            'command = ["python", "missing.py"]',
            {},
            "script 'missing.py' not found in {folder}",
        ),
        (
            'command = ["./train.sh"]',
            {"train.sh": "#!/bin/sh\n"},
            "'./train.sh' is not executable (chmod +x it) in {folder}",
        ),
    ],
)
def test_bad_user_code_exits_2_before_the_study_exists(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    workload: str,
    files: dict[str, str],
    message: str,
) -> None:
    module = unique("wrong")
    folder = tmp_path / "project"
    study = function_study("bad-code", "x", "[budget]\ntrials = 2\n")
    study = study.replace('name = "x:train"', workload.format(module=module))
    study_file = project(
        folder, {name.format(module=module): text for name, text in files.items()}, study
    )
    database = tmp_path / "studies.db"
    assert main(["run", str(study_file), "--storage", f"sqlite:///{database}"]) == 2
    assert message.format(folder=folder) in capsys.readouterr().err
    assert not database.exists()


def test_batch_is_refused_for_a_function_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = unique("train")
    study_file = project(
        tmp_path,
        {f"{module}.py": TRAIN_FUNCTION},
        function_study("batched", module, "[budget]\ntrials = 2\n"),
    )
    database = tmp_path / "studies.db"
    assert main(["run", str(study_file), "--storage", f"sqlite:///{database}", "--batch", "4"]) == 2
    assert "trains one trial at a time per worker" in capsys.readouterr().err
    assert not database.exists()


#: Epochs of the trials of the killed `tuner worker` (0.3 s of sleep each).
KILLED_EPOCHS = 10


def test_a_sigkilled_tuner_worker_function_trial_is_retried(
    tuner_process: Callable[..., subprocess.Popen], tmp_path: Path, sqlite_url: str
) -> None:
    """`tuner worker` started elsewhere finds the module through the recorded search path."""
    module = unique("slow")
    extra = f"[budget]\ntrials = 2\nepochs = {KILLED_EPOCHS}\n[pruner]\nname = 'none'\n"
    extra += (
        "[workload.options]\nsleep = 0.3\n[execution]\nheartbeat_seconds = 1\ngrace_seconds = 3\n"
    )
    spec = load_spec(
        project(
            tmp_path / "project",
            {f"{module}.py": TRAIN_FUNCTION},
            function_study("killed", module, extra),
        )
    )
    studies.create_or_resume(spec, open_storage(sqlite_url))
    victim = tuner_process("worker", "killed", "--storage", sqlite_url, "--name", "victim")
    # Early in its epochs, so that at least 5 sleeps of 0.3 s are left when the kill lands: a
    # trial seen in its last epoch could end first, and leave nothing to retry.
    wait_for(
        lambda: running_by("killed", sqlite_url, "victim", before_epoch=KILLED_EPOCHS // 2),
        60,
        "the victim to be early in a trial",
    )
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    rescuer = tuner_process("worker", "killed", "--storage", sqlite_url, "--name", "rescuer")
    assert rescuer.wait(timeout=120) == 0, rescuer.stderr.read()
    (retry,) = assert_finished_with_retries(trials_of(spec, sqlite_url), budget=2)
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["worker"] == "rescuer"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_stopping_the_worker_ends_a_script_trial_and_its_process_tree(
    tuner_process: Callable[..., subprocess.Popen],
    tmp_path: Path,
    sqlite_url: str,
    stop: signal.Signals,
) -> None:
    """Ctrl-C: the worker ends the script's process group and fails the trial, and stops its
    fork server. SIGKILL: the worker cannot, and its fork server (the script's parent) ends
    the group instead, then itself."""
    script = """
        import os
        import subprocess
        import time
        import tuner

        trial = tuner.current_trial()
        child = subprocess.Popen(["sleep", "600"])
        with open("pids.txt", "w") as pids:
            pids.write(f"{os.getpid()} {child.pid} {os.getppid()}")
        trial.report(1.0, 1)
        time.sleep(600)
        """
    spec = script_spec(tmp_path, "script-interrupted", script, "[budget]\ntrials = 1\nepochs = 2\n")
    studies.create_or_resume(spec, open_storage(sqlite_url))
    worker = tuner_process("worker", spec.name, "--storage", sqlite_url)
    pids_file = tmp_path / "pids.txt"
    wait_for(lambda: pids_file.exists() and pids_file.read_text(), 60, "the script to start")
    pids = [int(pid) for pid in pids_file.read_text().split()]
    assert all(alive(pid) for pid in pids)
    worker.send_signal(stop)
    assert worker.wait(timeout=60) == (130 if stop == signal.SIGINT else -signal.SIGKILL)
    wait_for(lambda: not any(alive(pid) for pid in pids), 15, "the script's processes to end")
    if stop == signal.SIGKILL:
        return  # its trial goes stale and is retried, as test_faults shows
    trial, rerun = trials_of(spec, sqlite_url)
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == "interrupted: the worker was stopped"
    assert rerun.state == TrialState.WAITING  # re-run when the study resumes


def test_a_function_study_resumes_from_another_folder_and_says_what_it_runs(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the study file was run from is no part of the search space: a second run from
    elsewhere resumes the study (tops its budget up) instead of refusing it."""
    module = unique("train")
    study_file = project(
        tmp_path / "project",
        {f"{module}.py": TRAIN_FUNCTION},
        function_study("resumed", module, "[budget]\ntrials = 1\nepochs = 1\n"),
    )
    monkeypatch.chdir(tmp_path)
    run_here(load_spec(study_file), sqlite_url)
    monkeypatch.chdir(tmp_path / "project")
    spec = load_spec(study_file, ["budget.trials=2"])
    trials = run_here(spec, sqlite_url)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert f"`{module}:train`: training code of your own" in study_note(spec)
