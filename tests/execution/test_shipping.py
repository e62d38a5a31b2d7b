"""The user's code travels to a Ray cluster with the tasks: the study file's folder, less what
is never shipped, refused before the study starts when too large, and imported on the worker
from where Ray unpacked it."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import optuna
import pytest

from tuner.errors import SpecError
from tuner.execution.shipping import SHIP_LIMIT_BYTES, code_folder, remap, shipped_size
from tuner.runner import with_overrides
from tuner.spec import StudySpec, load_spec
from tuner.storage.rdb import open_storage


def user_study(folder: Path, name: str, code: str = "") -> StudySpec:
    """A study whose training function is train.py beside the study file in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.py").write_text(
        textwrap.dedent(
            code
            or """
            def train(trial):
                # Where the worker found this module: the shipped copy, on a cluster.
                trial.optuna_trial.set_user_attr("module_file", __file__)
                trial.report({"loss": 1.0}, 1)
            """
        )
    )
    (folder / "study.toml").write_text(
        textwrap.dedent(
            f"""
            name = "{name}"
            metric = "loss"
            direction = "minimize"
            [workload]
            name = "train:train"
            [search]
            optimizers = ["sgd"]
            weight_decay = "off"
            [budget]
            trials = 2
            epochs = 1
            [execution]
            gpus_per_trial = 0.0
            """
        )
    )
    return load_spec(folder / "study.toml")


def test_the_study_file_s_folder_travels_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = user_study(tmp_path / "project", "shipped")
    assert code_folder(spec) == (tmp_path / "project").resolve()
    builtin = with_overrides(spec, workers=1).model_copy(
        update={"workload": spec.workload.model_copy(update={"name": "rosenbrock"})}
    )
    assert code_folder(builtin) is None  # nothing of the user's to ship


def test_what_is_never_shipped_does_not_count_and_the_rest_does(tmp_path: Path) -> None:
    spec = user_study(tmp_path / "project", "sized")
    folder = code_folder(spec)
    code = shipped_size(folder)
    assert code == sum(p.stat().st_size for p in folder.iterdir())
    (folder / ".git").mkdir()
    (folder / ".git" / "pack").write_bytes(b"x" * 10_000)
    (folder / "artifacts").mkdir()
    (folder / "artifacts" / "curve.png").write_bytes(b"x" * 10_000)
    (folder / "model.pt").write_bytes(b"x" * 10_000)
    assert shipped_size(folder) == code
    (folder / "helpers.py").write_bytes(b"#" * 1_000)
    assert shipped_size(folder) == code + 1_000


def test_code_too_large_to_ship_is_refused_before_the_study_is_written(
    tmp_path: Path, postgres_url: str
) -> None:
    import tuner

    name = f"test-{uuid.uuid4().hex[:10]}"
    spec = user_study(tmp_path / "project", name)
    with open(tmp_path / "project" / "data.bin", "wb") as data:
        data.truncate(SHIP_LIMIT_BYTES + 1)  # sparse: no disk spent
    spec = with_overrides(spec, storage=postgres_url, ray_address="127.0.0.1:1")
    with pytest.raises(SpecError, match="would be shipped to the cluster") as refused:
        tuner.run(spec)
    assert "\n" not in str(refused.value) and "data and models out" in str(refused.value)
    assert name not in optuna.get_all_study_names(open_storage(postgres_url))


def test_a_worker_reads_the_shipped_folders_from_where_ray_unpacked_them() -> None:
    path = ["/home/me/project/lib", "/home/me/project", "/opt/shared"]
    assert remap(path, "/home/me/project", "/tmp/ray/pkg") == [
        "/tmp/ray/pkg/lib",
        "/tmp/ray/pkg",
        "/opt/shared",
    ]


@pytest.mark.workers
def test_on_a_cluster_the_workers_import_the_code_ray_shipped(
    tmp_path: Path, postgres_url: str
) -> None:
    import ray
    from ray.cluster_utils import Cluster

    import tuner

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    name = f"test-{uuid.uuid4().hex[:10]}"
    project = tmp_path / "project"
    try:
        spec = with_overrides(
            user_study(project, name), storage=postgres_url, ray_address=cluster.address
        )
        tuner.run(spec)
        trials = optuna.load_study(study_name=name, storage=postgres_url).trials
        assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
        for trial in trials:
            found = Path(trial.user_attrs["module_file"])
            assert found.name == "train.py" and found.parent != project.resolve()
            assert "runtime_resources" in found.parts  # Ray's unpacked working_dir
    finally:
        ray.shutdown()
        cluster.shutdown()
        if name in optuna.get_all_study_names(open_storage(postgres_url)):
            optuna.delete_study(study_name=name, storage=open_storage(postgres_url))
