"""Study files: valid ones load into typed objects; each mistake names the file, key and fix."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import tuner.spec
from tuner.errors import SpecError
from tuner.search.optimizers import REGISTRY
from tuner.spec import load_spec, parse_spec

STUDIES = sorted(Path(__file__).parent.parent.joinpath("studies").glob("*.toml"))

MINIMAL = """
name = "t"
[workload]
name = "rosenbrock"
[budget]
trials = 5
"""


@pytest.mark.parametrize("path", STUDIES, ids=lambda path: path.name)
def test_every_shipped_study_is_valid(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name
    assert spec.metric and spec.direction in ("minimize", "maximize")
    assert spec.optimizer_choices()


def test_defaults_fill_in_metric_direction_sampler_and_pruner(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(MINIMAL)
    spec = load_spec(path)
    assert (spec.metric, spec.direction) == ("loss", "minimize")
    assert (spec.sampler.name, spec.pruner.name) == ("tpe", "successive_halving")
    assert [choice.name for choice in spec.optimizer_choices()] == [
        "sgd",
        "momentum",
        "adam",
        "adamw",
    ]


def test_cnn_metric_defaults_to_accuracy_maximised() -> None:
    spec = parse_spec(
        {
            "name": "c",
            "workload": {"name": "cnn", "options": {"dataset": "digits"}},
            "budget": {"trials": 1},
        }
    )
    assert (spec.metric, spec.direction) == ("val_accuracy", "maximize")


def test_optimizer_table_overrides_ranges_and_fixes_knobs() -> None:
    spec = parse_spec(
        {
            "name": "o",
            "workload": {"name": "rosenbrock"},
            "budget": {"trials": 1},
            "search": {"optimizers": ["adam"]},
            "optimizers": {"adam": {"learning_rate": [1e-3, 1e-2], "beta2": 0.98}},
        }
    )
    (adam,) = spec.optimizer_choices()
    assert (adam.learning_rate.low, adam.learning_rate.high) == (1e-3, 1e-2)
    assert adam.fixed["beta2"] == 0.98 and "beta2" not in adam.knobs
    assert adam.knobs["beta1"] == REGISTRY["adam"].knobs["beta1"]


def test_a_plain_weight_decay_fixes_it_like_a_learning_rate(tmp_path: Path) -> None:
    import optuna

    from tuner.search.space import sample_config

    path = tmp_path / "s.toml"
    path.write_text(MINIMAL)
    overrides = ["search.optimizers=['adamw']", "search.weight_decay='on'"]
    spec = load_spec(path, [*overrides, "optimizers.adamw.weight_decay=0.01"])
    (adamw,) = spec.optimizer_choices()
    assert (adamw.weight_decay.low, adamw.weight_decay.high) == (0.01, 0.01)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    assert sample_config(trial, spec).weight_decay == 0.01
    assert "weight_decay" not in trial.params  # a constant, not a parameter
    with pytest.raises(SpecError, match=r"weight_decay: expected a number or \[low, high\] > 0"):
        load_spec(path, [*overrides, "optimizers.adamw.weight_decay=0"])
    with pytest.raises(SpecError, match="weight_decay: expected a number"):
        load_spec(path, [*overrides, "optimizers.adamw.weight_decay='lots'"])


def test_any_library_optimizer_can_be_named_with_its_class() -> None:
    spec = parse_spec(
        {
            "name": "o",
            "workload": {"name": "rosenbrock"},
            "budget": {"trials": 1},
            "search": {"optimizers": ["asgd"]},
            "optimizers": {
                "asgd": {
                    "class": "torch.optim:ASGD",
                    "learning_rate": [1e-3, 1e-1],
                    "lambd": [1e-5, 1e-3],
                }
            },
        }
    )
    (asgd,) = spec.optimizer_choices()
    assert asgd.target == "torch.optim:ASGD"
    assert asgd.knobs["lambd"].scale == "log"


def test_overrides_are_type_checked(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(MINIMAL)
    assert load_spec(path, ["budget.trials=9", "budget.epochs=2"]).budget.trials == 9
    with pytest.raises(SpecError, match=r"\[budget\] trials"):
        load_spec(path, ["budget.trials=many"])
    with pytest.raises(SpecError, match="unknown key"):
        load_spec(path, ["budget.trails=3"])


BAD_SPECS = [
    ("unknown top-level key", MINIMAL + "colour = 'blue'\n", "colour: unknown key"),
    ("unknown nested key", MINIMAL + "[sampler]\nnmae = 'tpe'\n", r"\[sampler\] nmae: unknown key"),
    (
        "unknown optimizer",
        MINIMAL + "[search]\noptimizers = ['adamm']\n",
        "unknown optimizer 'adamm'",
    ),
    (
        "low above high",
        MINIMAL + "[search]\noptimizers=['adam']\n[optimizers.adam]\nlearning_rate = [0.1, 0.01]\n",
        r"\[optimizers.adam\] learning_rate: low 0.1 is above high 0.01",
    ),
    (
        "negative learning rate",
        MINIMAL + "[search]\noptimizers=['sgd']\n[optimizers.sgd]\nlearning_rate = [-0.1, 0.1]\n",
        "bounds must be positive",
    ),
    (
        "typo in optimizer key",
        MINIMAL + "[search]\noptimizers=['sgd']\n[optimizers.sgd]\nmomentun = 0.9\n",
        "unknown key 'momentun' for torch.optim:SGD",
    ),
    (
        "unknown workload",
        MINIMAL.replace("rosenbrock", "rosenbrok"),
        "unknown workload 'rosenbrok'",
    ),
    (
        "unknown workload option",
        MINIMAL + "[workload.options]\nstepz = 3\n",
        r"\[workload.options\] stepz",
    ),
    (
        "no budget",
        "name = 't'\n[workload]\nname = 'rosenbrock'\n[budget]\nepochs = 2\n",
        "never ends",
    ),
    ("unknown schedule", MINIMAL + "[search]\nschedules = ['cosin']\n", "unknown schedule 'cosin'"),
    (
        "metric the workload lacks",
        "metric = 'accuracy'\n" + MINIMAL,
        "reports loss, not 'accuracy'",
    ),
    ("missing workload", "name = 't'\n[budget]\ntrials = 1\n", "workload: missing"),
    (
        "misspelt optimizer table",
        MINIMAL + "[optimizers.adma]\nlearning_rate = [1e-5, 1e-4]\n",
        "unknown optimizer 'adma'",
    ),
    (
        "a parameter named like an optimizer knob",
        MINIMAL + "[params]\nbeta1 = { low = 0.1, high = 0.2 }\n",
        r"\[params\] beta1: one of tuner's own search parameters",
    ),
    (
        "a parameter named like a transformed knob",
        MINIMAL + "[params]\nlearning_rate_in_range = 1\n",
        r"\[params\] learning_rate_in_range: names .* ending '_in_range' are tuner's own",
    ),
    (
        "a reversed parameter range",
        MINIMAL + "[params]\ndropout = { low = 0.5, high = 0.1 }\n",
        r"\[params\] dropout: low 0.5 is above high 0.1: expected low < high",
    ),
    (
        "an empty parameter range",
        MINIMAL + "[params]\nlayers = { low = 2, high = 2 }\n",
        r"\[params\] layers: low 2 equals high 2",
    ),
    (
        "a log parameter range through zero",
        MINIMAL + "[params]\nscale = { low = 0.0, high = 1.0, log = true }\n",
        r"\[params\] scale: log = true needs 0 < low",
    ),
    (
        "a non-finite parameter bound",
        MINIMAL + "[params]\nscale = { low = 0.0, high = inf }\n",
        r"\[params\] scale: high: expected a finite number, got inf",
    ),
    (
        "a choice list of mixed types",
        MINIMAL + "[params]\nwidth = { choices = [64, 'wide'] }\n",
        r"\[params\] width: choices: expected values of one type",
    ),
    (
        "an empty choice list",
        MINIMAL + "[params]\nwidth = { choices = [] }\n",
        r"\[params\] width: choices: expected a non-empty list",
    ),
    (
        "a misspelt parameter key",
        MINIMAL + "[params]\ndropout = { low = 0.0, hihg = 0.5 }\n",
        r"\[params\] dropout: unknown key 'hihg'",
    ),
    (
        "a parameter given as a bare list",
        MINIMAL + "[params]\ndropout = [0.0, 0.5]\n",
        r"\[params\] dropout: expected \{ low, high \}",
    ),
    (
        "cnn without a dataset",
        "name = 'c'\n[workload]\nname = 'cnn'\n[budget]\ntrials = 1\n",
        r"\[workload.options\] dataset",
    ),
]


@pytest.mark.parametrize(("case", "text", "message"), BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_is_refused_with_file_key_and_reason(
    tmp_path: Path, case: str, text: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message) as error:
        load_spec(path)
    assert str(error.value).startswith(str(path))


def test_missing_file_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such study file"):
        load_spec(tmp_path / "nope.toml")
    path = tmp_path / "broken.toml"
    path.write_text("name = \n")
    with pytest.raises(SpecError, match="invalid TOML"):
        load_spec(path)


def test_optimizer_choices_are_resolved_once_at_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = '[optimizers.adam]\nbeta1 = 0.95\n[search]\noptimizers = ["adam", "sgd"]\n'
    spec = parse_spec(tomllib.loads(MINIMAL + extra))

    def resolve_again(name: str, table: object) -> None:
        raise AssertionError(f"{name} resolved again after validation")

    monkeypatch.setattr(tuner.spec, "resolve_optimizer", resolve_again)
    adam, sgd = spec.optimizer_choices()
    assert (adam.name, adam.fixed["beta1"], sgd.name) == ("adam", 0.95, "sgd")
