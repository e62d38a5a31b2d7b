"""Checkpoints: a killed trial's re-run resumes where it stopped and ends as if never killed;
what goes wrong with the files (unreadable, foreign, unwritable, killed mid-write) costs at most
the epochs since, and finished trials leave nothing behind but the best's when asked."""

from __future__ import annotations

import logging
import math
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import FrozenTrial, TrialState

from tests.specs import build_spec
from tests.test_faults import run_in_thread, two_node_cluster
from tuner.execution.worker import run_worker
from tuner.spec import StudySpec, load_spec
from tuner.storage import optuna_internals as internals
from tuner.storage.artifacts import artifact_dir
from tuner.storage.checkpoints import CheckpointFile, checkpoint_folder
from tuner.storage.rdb import open_storage
from tuner.study import lifecycle as studies
from tuner.study.best import best_config

FAST_HEARTBEAT = {"heartbeat_seconds": 1, "grace_seconds": 3}
#: Epochs of a trial a test kills: long enough (a few seconds) that the kill lands part-way.
KILLED_EPOCHS = 60


def builtin_spec(name: str, **execution: Any) -> StudySpec:
    """One Rosenbrock trial of about 50 ms an epoch, pruning off."""
    return build_spec(
        name=name,
        workload={"name": "rosenbrock", "options": {"steps_per_epoch": 200}},
        search={"optimizers": ["adam"], "weight_decay": "off", "schedules": ["cosine"]},
        budget={"trials": 1, "epochs": KILLED_EPOCHS},
        pruner={"name": "none"},
        execution={**FAST_HEARTBEAT, **execution},
    )


def function_spec(name: str, **execution: Any) -> StudySpec:
    """One trial of a training function that checkpoints and restores itself."""
    return build_spec(
        name=name,
        metric="val_loss",
        direction="minimize",
        workload={
            "name": "tests.workloads.factories:checkpointed_train",
            "options": {"sleep": 0.05},
        },
        search={"optimizers": ["momentum"], "weight_decay": "off"},
        budget={"trials": 1, "epochs": KILLED_EPOCHS},
        pruner={"name": "none"},
        execution={**FAST_HEARTBEAT, **execution},
    )


def trials_of(name: str, url: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    limit = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > limit:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def reference(spec: StudySpec, params: dict[str, Any], tmp_path: Path) -> FrozenTrial:
    """The trial with these parameters as it ends when nothing kills it (its own SQLite file,
    this process)."""
    url = f"sqlite:///{tmp_path / 'reference.db'}"
    studies.create_or_resume(spec, open_storage(url)).enqueue_trial(params)
    run_worker(spec, url, threads=1)
    (trial,) = trials_of(spec.name, url)
    assert trial.state == TrialState.COMPLETE
    return trial


@pytest.mark.parametrize("make_spec", [builtin_spec, function_spec], ids=["builtin", "function"])
def test_a_sigkilled_trial_resumes_from_its_last_checkpoint_and_ends_as_if_never_killed(
    tuner_process: Callable[..., subprocess.Popen],
    storage_url: str,
    study_name: str,
    tmp_path: Path,
    make_spec: Callable[..., StudySpec],
) -> None:
    spec = make_spec(study_name)
    studies.create_or_resume(spec, open_storage(storage_url))
    victim = tuner_process("worker", study_name, "--storage", storage_url, "--threads", "1")

    def part_way() -> bool:
        trials = trials_of(study_name, storage_url)
        return bool(trials) and 3 <= len(trials[0].intermediate_values) <= KILLED_EPOCHS // 2

    wait_for(part_way, 120, "the victim to be part-way through its trial")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    (killed,) = trials_of(study_name, storage_url)
    reported = len(killed.intermediate_values)
    assert reported < KILLED_EPOCHS

    rescuer = tuner_process("worker", study_name, "--storage", storage_url, "--threads", "1")
    assert rescuer.wait(timeout=180) == 0, rescuer.stderr.read()
    failed, retry = trials_of(study_name, storage_url)
    assert failed.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    # It resumed from the checkpoint after the last epoch the victim reported (or the one
    # before, if the kill fell between the report and the checkpoint).
    resumed = retry.user_attrs["resumed_from"]
    assert resumed["trial"] == killed.number and reported - 1 <= resumed["epoch"] <= reported
    assert resumed["epoch"] >= 2

    # Same parameters, seed stream and every float: as if the trial had never been killed.
    alone = reference(make_spec(f"{study_name}-ref"), killed.params, tmp_path)
    assert retry.params == alone.params == killed.params
    assert retry.user_attrs["seed"] == alone.user_attrs["seed"]
    assert retry.user_attrs["curve"] == alone.user_attrs["curve"]
    assert retry.intermediate_values == alone.intermediate_values  # the pruner saw them all
    assert retry.value == alone.value
    # Finished: its checkpoint is gone.
    assert not list(checkpoint_folder(storage_url, study_name).glob("trial_*"))


def interrupted_rerun(spec: StudySpec, url: str) -> optuna.Study:
    """The study with its first trial interrupted before it trained: its re-run waits."""
    study = studies.create_or_resume(spec, open_storage(url))
    trial = studies.claim_trial(study, spec)
    assert studies.interrupt(study, internals.trial_id(trial), "interrupted: by the test")
    return study


def _garbage(path: Path, spec: StudySpec) -> None:
    path.write_bytes(b"half a checkpoint")


def _other_study(path: Path, spec: StudySpec) -> None:
    CheckpointFile(path.parent, "another-study", 0, "rosenbrock").save(0, 5, {}, [])
    (path.parent / "trial_0.pt").rename(path)


def _other_workload(path: Path, spec: StudySpec) -> None:
    CheckpointFile(path.parent, spec.name, 0, "himmelblau").save(0, 5, {}, [])


def _unfitting_state(path: Path, spec: StudySpec) -> None:
    curve = [{"epoch": 1, "loss": 1.0, "train_loss": 1.0, "learning_rate": 0.1}]
    CheckpointFile(path.parent, spec.name, 0, "rosenbrock").save(0, 1, {"model": {}}, curve)


@pytest.mark.parametrize(
    ("plant", "named"),
    [
        (_garbage, "unreadable"),
        (_other_study, "written for study 'another-study'"),
        (_other_workload, "written for workload 'himmelblau'"),
        (_unfitting_state, 'Missing key(s) in state_dict: "position"'),
    ],
    ids=["corrupt", "other-study", "other-workload", "state-does-not-fit"],
)
def test_a_checkpoint_that_cannot_be_resumed_is_named_and_the_rerun_starts_at_epoch_1(
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
    plant: Callable[[Path, StudySpec], None],
    named: str,
) -> None:
    spec = builtin_spec("planted", checkpoint_every=1)
    spec = spec.model_copy(update={"budget": spec.budget.model_copy(update={"epochs": 3})})
    interrupted_rerun(spec, sqlite_url)
    path = checkpoint_folder(sqlite_url, "planted") / "trial_0.pt"
    path.parent.mkdir(parents=True)
    plant(path, spec)
    with caplog.at_level(logging.WARNING):
        run_worker(spec, sqlite_url, threads=1)
    _, rerun = trials_of("planted", sqlite_url)
    assert rerun.state == TrialState.COMPLETE and "resumed_from" not in rerun.user_attrs
    assert [point["epoch"] for point in rerun.user_attrs["curve"]] == [1, 2, 3]
    (warning,) = [r.getMessage() for r in caplog.records if "not resumed from" in r.getMessage()]
    assert str(path) in warning and named in warning and "starting at epoch 1" in warning
    assert "\n" not in warning


def test_a_checkpoint_folder_made_unwritable_mid_study_is_one_warning_and_trials_train_on(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    spec = build_spec(
        name="unwritable",
        search={"optimizers": ["adam"], "weight_decay": "off"},  # none diverges
        budget={"trials": 3, "epochs": 4},
        pruner={"name": "none"},
    )
    studies.create_or_resume(spec, open_storage(sqlite_url))
    folder = artifact_dir(sqlite_url) / "checkpoints"

    def block_after_the_first_trial(study: optuna.Study) -> bool:
        # A file where the checkpoints' folder was: no write can succeed (even as root, whom
        # a read-only folder would not stop).
        if study.get_trials(states=(TrialState.COMPLETE,)) and folder.is_dir():
            shutil.rmtree(folder)
            folder.write_text("in the way")
        return False

    with caplog.at_level(logging.WARNING):
        run_worker(spec, sqlite_url, threads=1, stop=block_after_the_first_trial)
    assert folder.is_file()  # it was blocked, after the first trial had written checkpoints
    trials = trials_of("unwritable", sqlite_url)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert all(len(t.user_attrs["curve"]) == 4 for t in trials)
    messages = [record.getMessage() for record in caplog.records]
    warnings = [message for message in messages if "checkpoint not written" in message]
    # One line per trial that found it blocked, not one per epoch.
    assert [warning.split(":")[0] for warning in warnings] == ["trial 1", "trial 2"]
    assert all("trains on without checkpoints" in warning for warning in warnings)


WRITER = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from tuner.storage.checkpoints import CheckpointFile
    file = CheckpointFile(Path(sys.argv[1]), "killed", 0, "rosenbrock")
    epoch = 0
    while True:
        epoch += 1
        file.save(0, epoch, {"weights": torch.full((1 << 21,), float(epoch))}, [])
        print(epoch, flush=True)
    """
)


def test_a_writer_killed_mid_write_leaves_the_last_whole_checkpoint(tmp_path: Path) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        for _ in range(3):  # several whole checkpoints written; the next one under way
            assert writer.stdout.readline()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    file = CheckpointFile(tmp_path, "killed", 0, "rosenbrock")
    checkpoint = file.load()
    assert checkpoint is not None and checkpoint.epoch >= 3
    expected = torch.full((1 << 21,), float(checkpoint.epoch))
    assert torch.equal(checkpoint.state["weights"], expected)
    file.discard()  # the trial's end takes a killed writer's temporary file with it
    assert not list(tmp_path.iterdir())


def test_finished_trials_keep_only_the_best_checkpoint_when_asked(sqlite_url: str) -> None:
    spec = build_spec(
        name="kept", budget={"trials": 4, "epochs": 2}, execution={"keep_best_checkpoint": True}
    )
    studies.create_or_resume(spec, open_storage(sqlite_url))
    run_worker(spec, sqlite_url, threads=1)
    study = optuna.load_study(study_name="kept", storage=sqlite_url)
    folder = checkpoint_folder(sqlite_url, "kept")
    assert not list(folder.glob("trial_*"))  # no running trial's checkpoint left
    (kept,) = (folder / "kept").iterdir()
    assert kept.name == f"trial_{study.best_trial.number}.pt"
    best = best_config("kept", storage=sqlite_url)
    assert best.checkpoint == kept
    saved = torch.load(kept, weights_only=False)
    assert saved["epoch"] == 2 and set(saved["state"]["model"]) == {"position"}


def test_without_keep_best_no_checkpoint_outlives_its_trial(sqlite_url: str) -> None:
    spec = build_spec(name="unkept", budget={"trials": 3, "epochs": 3})
    studies.create_or_resume(spec, open_storage(sqlite_url))
    run_worker(spec, sqlite_url, threads=1)
    assert not [p for p in checkpoint_folder(sqlite_url, "unkept").rglob("*") if p.is_file()]
    assert best_config("unkept", storage=sqlite_url).checkpoint is None


STACKED_EPOCHS = 12


def stacked_spec(name: str) -> StudySpec:
    """Three regression trials that stack (Adam) in one worker, pruning off."""
    return build_spec(
        name=name,
        workload={"name": "mlp_regression", "options": {"samples": 4_000}},
        search={"optimizers": ["adam"], "weight_decay": "off", "batch_sizes": [32]},
        budget={"trials": 3, "epochs": STACKED_EPOCHS},
        pruner={"name": "none"},
        execution={**FAST_HEARTBEAT, "trials_per_worker": 3},
    )


@pytest.mark.slow  # two workers and a reference train three 12-epoch regressions each
def test_a_sigkilled_stacked_worker_s_trials_resume_and_end_as_if_never_killed(
    tuner_process: Callable[..., subprocess.Popen], sqlite_url: str, tmp_path: Path
) -> None:
    spec = stacked_spec("stacked")
    studies.create_or_resume(spec, open_storage(sqlite_url))
    victim = tuner_process("worker", "stacked", "--storage", sqlite_url, "--threads", "1")

    def all_part_way() -> bool:
        epochs = [len(t.intermediate_values) for t in trials_of("stacked", sqlite_url)]
        return len(epochs) == 3 and all(2 <= e <= STACKED_EPOCHS // 2 for e in epochs)

    wait_for(all_part_way, 180, "the victim to be part-way through three stacked trials")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = trials_of("stacked", sqlite_url)
    # All three retried at once, so that the rescuer stacks them together from their first
    # step as the victim did (a stack of two then three rounds floats differently).
    storage = open_storage(sqlite_url, heartbeat=(1, 3))
    study = optuna.load_study(study_name="stacked", storage=storage)
    wait_for(
        lambda: len(storage.stale_silences(internals.study_id(study))) == 3,
        60,
        "the three trials to go stale",
    )
    assert len(studies.fail_stale_trials(study)) == 3

    rescuer = tuner_process("worker", "stacked", "--storage", sqlite_url, "--threads", "1")
    assert rescuer.wait(timeout=300) == 0, rescuer.stderr.read()
    retries = {
        t.system_attrs["failed_trial"]: t
        for t in trials_of("stacked", sqlite_url)
        if "failed_trial" in t.system_attrs
    }
    assert sorted(retries) == [0, 1, 2]

    url = f"sqlite:///{tmp_path / 'reference.db'}"
    reference_spec = stacked_spec("stacked-ref")
    study = studies.create_or_resume(reference_spec, open_storage(url))
    for trial in killed:
        study.enqueue_trial(trial.params)
    run_worker(reference_spec, url, threads=1)
    # A stack trains its rows in float32 with vmapped kernels whose reduction order follows
    # which trials share the stack and where: a resumed stack need not hold them as the
    # reference's did (a sweep may catch two of three before the third), so the values agree
    # to float32 rounding, not bit for bit (seen: 0.6-1.5 float32 eps apart by epoch 12).
    same = {"rel": math.sqrt(torch.finfo(torch.float32).eps), "abs": 0.0}
    for alone in trials_of("stacked-ref", url):
        retry = retries[alone.number]
        assert retry.state == TrialState.COMPLETE
        assert retry.user_attrs["resumed_from"]["epoch"] >= 1
        curve, expected = retry.user_attrs["curve"], alone.user_attrs["curve"]
        assert [epoch.keys() for epoch in curve] == [epoch.keys() for epoch in expected]
        for epoch, reference in zip(curve, expected, strict=True):
            assert epoch == pytest.approx(reference, **same)
        assert retry.value == pytest.approx(alone.value, **same)


EXAMPLES = Path(__file__).parents[2] / "examples"
ADAPTER_EPOCHS = 8


@pytest.mark.slow  # a framework's start-up, twice, and eight epochs
@pytest.mark.parametrize("example", ["lightning", "transformers"])
def test_an_adapter_s_killed_trial_continues_the_framework_s_loop_from_its_checkpoint(
    tuner_process: Callable[..., subprocess.Popen],
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    example: str,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = load_spec(EXAMPLES / example / "study.toml")
    spec = spec.model_copy(
        update={
            "budget": spec.budget.model_copy(update={"trials": 1, "epochs": ADAPTER_EPOCHS}),
            "pruner": spec.pruner.model_copy(update={"name": "none"}),
            "execution": spec.execution.model_copy(update=FAST_HEARTBEAT),
        }
    )
    studies.create_or_resume(spec, open_storage(sqlite_url))
    victim = tuner_process("worker", spec.name, "--storage", sqlite_url, "--threads", "1")

    def part_way() -> bool:
        trials = trials_of(spec.name, sqlite_url)
        return bool(trials) and 2 <= len(trials[0].intermediate_values) <= ADAPTER_EPOCHS // 2

    wait_for(part_way, 300, "the victim to be part-way through its trial")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    (killed,) = trials_of(spec.name, sqlite_url)

    rescuer = tuner_process("worker", spec.name, "--storage", sqlite_url, "--threads", "1")
    assert rescuer.wait(timeout=300) == 0, rescuer.stderr.read()
    _, retry = trials_of(spec.name, sqlite_url)
    assert retry.state == TrialState.COMPLETE, retry.user_attrs.get("fail_reason")
    resumed = retry.user_attrs["resumed_from"]
    assert resumed["trial"] == killed.number and resumed["epoch"] >= 1
    # The framework went on at the next epoch: every epoch reported once, in order.
    assert sorted(retry.intermediate_values) == list(range(1, ADAPTER_EPOCHS + 1))
    assert [p["epoch"] for p in retry.user_attrs["curve"]] == list(range(1, ADAPTER_EPOCHS + 1))
    for epoch in range(1, resumed["epoch"] + 1):
        assert retry.intermediate_values[epoch] == killed.intermediate_values[epoch]


@pytest.mark.workers
def test_a_lost_ray_node_s_trial_resumes_from_its_checkpoint_on_the_shared_folder(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuner.runner import with_overrides

    # The folder every node shares (here, one machine's), in every node's environment.
    monkeypatch.setenv("TUNER_ARTIFACT_DIR", str(tmp_path / "shared"))
    with two_node_cluster(postgres_url) as (cluster, doomed, name):
        spec = builtin_spec(name, workers=2, gpus_per_trial=0.0)
        spec = with_overrides(
            spec.model_copy(update={"budget": spec.budget.model_copy(update={"trials": 2})}),
            storage=postgres_url,
            ray_address=cluster.address,
        )
        driver, errors = run_in_thread(spec)

        def on_doomed_node() -> list[FrozenTrial]:
            try:
                trials = trials_of(name, postgres_url)
            except KeyError:
                return []
            return [
                t
                for t in trials
                if t.state == TrialState.RUNNING
                and doomed.node_id[:8] in str(t.user_attrs.get("node"))
                and 3 <= len(t.intermediate_values) <= KILLED_EPOCHS // 2
            ]

        wait_for(lambda: bool(on_doomed_node()), 180, "a trial part-way on the doomed node")
        (lost,) = on_doomed_node()
        cluster.remove_node(doomed)
        driver.join(timeout=300)
        assert not driver.is_alive() and not errors, errors
        trials = trials_of(name, postgres_url)
        (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
        assert retry.state == TrialState.COMPLETE
        resumed = retry.user_attrs["resumed_from"]
        assert resumed["trial"] == lost.number and resumed["epoch"] >= 2
        assert sorted(retry.intermediate_values) == list(range(1, KILLED_EPOCHS + 1))
