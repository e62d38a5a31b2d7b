"""The user's own parameters, declared in ``[params]`` and asked with ``trial.suggest_*``,
through a real study on SQLite and PostgreSQL: stored under the user's names, shown by
`best_config()`, ``tuner best`` and the importances, re-run by confirmation and carried by a
warm start."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState

import tuner
from tests.execution.test_user_code import (
    function_study,
    project,
    run_here,
    script_spec,
    trials_of,
    unique,
)
from tuner.cli import main
from tuner.execution.stacked import shape_changing_param
from tuner.execution.worker import run_worker
from tuner.runner import create_study, queued_only
from tuner.spec import load_spec
from tuner.storage.rdb import open_storage
from tuner.study import confirmation
from tuner.study.importance import parameter_importances
from tuner.study.results import CONFIRMS, COPIED_FROM
from tuner.views.report import write_report

#: A cheap deterministic landscape of the user's parameters: best at dropout 0.3, width 128,
#: one layer; `gap` exists only for deeper models (a conditional parameter).
TRAIN = """
def train(trial):
    layers = trial.suggest_int("layers", 1, 3)
    assert trial.suggest_int("layers", 1, 3) == layers  # asked again: the same value
    loss = (trial.params["dropout"] - 0.3) ** 2 + (trial.params["width"] != 128) * 0.1
    if layers > 1:
        loss += 0.05 * layers * trial.suggest_float("gap", 0.1, 1.0, log=True)
    trial.report({"val_loss": loss}, 1)
"""


def study_text(name: str, dropout_high: float = 0.5, extra: str = "") -> str:
    return f"""
        name = "{name}"
        metric = "val_loss"
        direction = "minimize"
        [workload]
        name = "MODULE:train"
        [search]
        optimizers = ["sgd", "adam"]
        weight_decay = "off"
        {extra}
        [params]
        dropout = {{ low = 0.0, high = {dropout_high} }}
        width = {{ choices = [64, 128, 256] }}
        [budget]
        trials = 8
        epochs = 1
        confirm = {{ top = 1, seeds = 2 }}
        [pruner]
        name = "none"
        """


@pytest.fixture
def more_names(storage_url: str) -> Iterator[list[str]]:
    """Names of the warm-started studies, deleted afterwards from shared databases."""
    names = [f"test-{uuid.uuid4().hex[:10]}" for _ in range(2)]
    yield names
    for name in names:
        if name in optuna.get_all_study_names(storage_url):
            optuna.delete_study(study_name=name, storage=storage_url)


def test_declared_and_asked_parameters_are_stored_shown_confirmed_and_warm_started(
    tmp_path: Path,
    storage_url: str,
    study_name: str,
    more_names: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    module = unique("params")

    def spec_for(name: str, folder: str, **changes: object):
        text = study_text(name, **changes).replace("MODULE", module)  # type: ignore[arg-type]
        return load_spec(project(tmp_path / folder, {f"{module}.py": TRAIN}, text))

    spec = spec_for(study_name, "first")
    trials = run_here(spec, storage_url)
    assert all(t.state is TrialState.COMPLETE for t in trials)
    for trial in trials:
        # Stored as ordinary Optuna parameters under the user's names, in natural units.
        assert 0.0 <= trial.params["dropout"] <= 0.5 and trial.params["width"] in (64, 128, 256)
        assert ("gap" in trial.params) == (trial.params["layers"] > 1)
        recorded = trial.user_attrs["config"]["params"]
        assert recorded == {
            name: trial.params[name]
            for name in ("dropout", "width", "layers", "gap")
            if name in trial.params
        }
    assert any("gap" in t.params for t in trials) and any("gap" not in t.params for t in trials)

    best_trial = min(trials, key=lambda t: t.value)
    best = tuner.best_config(study_name, storage=storage_url)
    assert best.trial_number == best_trial.number
    assert dict(best.params) == best_trial.user_attrs["config"]["params"]
    assert best.to_dict()["params"] == dict(best.params)
    with pytest.raises(TypeError):
        best.params["dropout"] = 0.0  # type: ignore[index]
    assert main(["best", study_name, "--json", "--storage", storage_url]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == dict(best.params)
    assert main(["best", study_name, "--storage", storage_url]) == 0
    table = capsys.readouterr().out
    assert "dropout" in table and "width" in table and "layers" in table

    importances = parameter_importances(trials, StudyDirection.MINIMIZE, "val_loss", min_trials=2)
    assert {"dropout", "width", "layers"} <= set(importances.ped_anova)

    page = write_report(study_name, tmp_path / "report", storage_url).read_text()
    assert f"dropout={best.params['dropout']:.4g}" in page  # the top trials' table

    # Confirmation re-runs the winner with the same values, declared and asked alike.
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
    assert confirmation.queue_runs(study, spec).runs == 2
    run_worker(queued_only(study, spec), storage_url, threads=1)
    runs = [t for t in trials_of(spec, storage_url) if CONFIRMS in t.user_attrs]
    assert len(runs) == 2
    for run in runs:
        assert run.state is TrialState.COMPLETE
        assert run.params == best_trial.params
        assert run.user_attrs["config"]["params"] == best_trial.user_attrs["config"]["params"]

    # A warm start copies trials whose parameters have the same distributions here ...
    same = spec_for(more_names[0], "same", extra=f'warm_start = ["{study_name}"]')
    _, [transfer] = create_study(same, storage_url)
    assert transfer.copied == len(trials) and transfer.skipped == 0
    copies = [t for t in trials_of(same, storage_url) if COPIED_FROM in t.user_attrs]
    assert {c.user_attrs[COPIED_FROM]["trial"] for c in copies} == {t.number for t in trials}
    # ... and names a parameter whose distribution differs.
    other = spec_for(
        more_names[1], "other", dropout_high=0.4, extra=f'warm_start = ["{study_name}"]'
    )
    _, [transfer] = create_study(other, storage_url)
    assert transfer.copied == 0 and transfer.skipped == len(trials)
    assert "dropout is [0, 0.5] there, [0, 0.4] here" in "; ".join(transfer.reasons)


def test_a_factory_and_a_script_see_the_trials_parameters(tmp_path: Path, sqlite_url: str) -> None:
    module = unique("probe")
    code = """
        import torch

        class Probe:  # its loss is the user's parameter `target`, as its context has it
            def __init__(self, target):
                self.model, self.target = torch.nn.Linear(1, 1), target

            def steps_per_epoch(self):
                return 1

            def epoch(self, generator):
                yield lambda: self.model.weight.pow(2).sum()

            def evaluate(self):
                return {"val_loss": self.target}

        def factory(options, context):
            return Probe(context.params["target"])
        """
    study = function_study("params-factory", module, "[budget]\ntrials = 3\nepochs = 1\n")
    study = study.replace('name = "' + module + ':train"', 'name = "' + module + ':factory"')
    study += "[params]\ntarget = { low = 1.0, high = 2.0 }\n"
    factory = load_spec(project(tmp_path / "factory", {f"{module}.py": code}, study))
    for trial in run_here(factory, sqlite_url):
        assert trial.value == trial.params["target"]  # the context held the sampled value

    script = """
        import tuner

        trial = tuner.current_trial()
        layers = trial.suggest_int("layers", 1, 3)
        trial.report({"val_loss": trial.params["dropout"] + layers}, 1)
        """
    extra = "[params]\ndropout = { low = 0.0, high = 0.5 }\n[budget]\ntrials = 3\nepochs = 1\n"
    spec = script_spec(tmp_path / "script", "params-script", script, extra)
    for trial in run_here(spec, sqlite_url):
        assert trial.state is TrialState.COMPLETE
        assert trial.value == trial.params["dropout"] + trial.params["layers"]
        recorded = trial.user_attrs["config"]["params"]
        assert recorded == {"dropout": trial.params["dropout"], "layers": trial.params["layers"]}


#: A factory whose model's width is a parameter of the user's and whose loss scales with
#: another (`scale`), which changes no shape.
SHAPED_FACTORY = """
    import torch

    class Shaped:
        def __init__(self, width, scale):
            self.model = torch.nn.Sequential(torch.nn.Linear(2, width), torch.nn.Linear(width, 1))
            self.scale = scale

        def steps_per_epoch(self):
            return 1

        def epoch(self, generator):
            yield lambda: self.scale * self.model(torch.ones(4, 2)).pow(2).mean()

        def evaluate(self):
            return {"val_loss": float(self.model(torch.ones(4, 2)).pow(2).mean())}

    def factory(options, context):
        return Shaped(context.params.get("width", 4), context.params["scale"])
    """


def test_stacking_refuses_parameters_that_change_the_models_shapes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = unique("shaped")
    study = function_study("shaped", module, "[budget]\ntrials = 2\nepochs = 1\n")
    study = study.replace(f'name = "{module}:train"', f'name = "{module}:factory"')
    shaped = study + "[params]\nscale = { low = 0.5, high = 2.0 }\nwidth = { choices = [4, 8] }\n"
    study_file = project(tmp_path / "shaped", {f"{module}.py": SHAPED_FACTORY}, shaped)
    database = tmp_path / "studies.db"
    assert main(["run", str(study_file), "--storage", f"sqlite:///{database}", "--batch", "4"]) == 2
    error = capsys.readouterr().err
    assert "[params] width: the model's shapes change with it (4 and 8 differ)" in error
    assert "trials_per_worker = 1" in error and len(error.strip().splitlines()) == 1
    assert not database.exists()

    scaled = study + "[params]\nscale = { low = 0.5, high = 2.0 }\n"
    spec = load_spec(project(tmp_path / "scaled", {f"{module}.py": SHAPED_FACTORY}, scaled))
    assert shape_changing_param(spec) is None
