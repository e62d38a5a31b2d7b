"""Each registered workload: it builds, reports its metrics, reproduces from its seed and
learns; the landscapes' minima, the options' checks and how user code is told apart.

Parametrised over the registry, so a new workload without small options here fails
`test_every_workload_has_small_options_here` instead of going untested.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.specs import build_spec
from tuner.workloads import REGISTRY, build_trainable, resolve_metric, uses_batches
from tuner.workloads.base import TrialContext
from tuner.workloads.landscapes import SURFACES
from tuner.workloads.user import import_user, kind, search_path

CPU = torch.device("cpu")

#: Options that make each workload a test of a second or less.
SMALL: dict[str, dict[str, Any]] = {
    "rosenbrock": {"steps_per_epoch": 5},
    "himmelblau": {"steps_per_epoch": 5},
    "double_well": {"steps_per_epoch": 5},
    "linear_regression": {"samples": 200},
    "mlp_regression": {"samples": 200},
    "cnn": {"dataset": "digits"},
}
#: Adam's learning rate that makes one epoch an improvement on each kind of workload.
LEARNING_RATE = {"cnn": 3e-3}


def workload_spec(name: str, **options: Any):
    return build_spec(workload={"name": name, "options": {**SMALL[name], **options}}).workload


def build(name: str, seed: int = 0, **options: Any):
    return build_trainable(workload_spec(name, **options), TrialContext(seed, CPU, batch_size=32))


def train_one_epoch(trainable, name: str) -> None:
    optimizer = torch.optim.Adam(trainable.model.parameters(), lr=LEARNING_RATE.get(name, 1e-2))
    for step_loss in trainable.epoch(torch.Generator().manual_seed(0)):
        optimizer.zero_grad()
        step_loss().backward()
        optimizer.step()


def test_every_workload_has_small_options_here() -> None:
    assert set(SMALL) == set(REGISTRY)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_a_workload_reports_every_metric_it_declares(name: str) -> None:
    trainable = build(name)
    metrics = trainable.evaluate()
    assert set(REGISTRY[name].metrics) <= set(metrics)
    assert REGISTRY[name].default_metric in REGISTRY[name].metrics
    assert all(torch.isfinite(torch.tensor(value)) for value in metrics.values())
    assert len(list(trainable.epoch(torch.Generator().manual_seed(0)))) == (
        trainable.steps_per_epoch()
    )


@pytest.mark.parametrize("name", list(REGISTRY))
def test_the_same_seed_builds_the_same_trial(name: str) -> None:
    first, again = build(name, seed=3), build(name, seed=3)
    for one, other in zip(
        first.model.state_dict().values(), again.model.state_dict().values(), strict=True
    ):
        assert torch.equal(one, other)
    assert first.evaluate() == again.evaluate()


@pytest.mark.parametrize("name", list(REGISTRY))
def test_one_epoch_of_adam_improves_the_default_metric(name: str) -> None:
    workload = REGISTRY[name]
    metric = workload.default_metric
    trainable = build(name)
    before = trainable.evaluate()[metric]
    train_one_epoch(trainable, name)
    after = trainable.evaluate()[metric]
    assert after < before if workload.metrics[metric] == "minimize" else after > before


@pytest.mark.parametrize("name", list(SURFACES))
def test_a_landscape_is_zero_at_its_minima_and_starts_where_it_says(name: str) -> None:
    surface = SURFACES[name]
    for minimum in surface.minima:
        value = surface.function(torch.tensor(minimum, dtype=torch.float64))
        assert abs(float(value)) < 1e-9
    trainable = build(name)
    assert trainable.model.position.tolist() == surface.start
    assert build(name, start=[0.5] * len(surface.start)).model.position.tolist() == (
        [0.5] * len(surface.start)
    )


def test_the_double_well_has_its_two_minima_where_its_description_says() -> None:
    grid = torch.linspace(-2.0, 2.5, 45_001, dtype=torch.float64).unsqueeze(0)
    values = SURFACES["double_well"].function(grid)
    deep = int(values.argmin())
    assert round(float(grid[0, deep]), 2) == -1.06 and round(float(values[deep]), 2) == -1.51
    right = grid[0] > 0
    shallow = int(values[right].argmin())
    assert round(float(grid[0, right][shallow]), 2) == 0.93
    assert round(float(values[right][shallow]), 2) == -0.52


def test_a_landscapes_start_needs_one_coordinate_per_axis() -> None:
    with pytest.raises(ValueError, match=r"rosenbrock: start needs 2 coordinates"):
        build("rosenbrock", start=[0.0])


def test_noise_moves_the_gradient_not_the_surface() -> None:
    quiet, noisy = build("rosenbrock"), build("rosenbrock", noise=1.0)
    assert quiet.evaluate() == noisy.evaluate()
    gradients = []
    for trainable in (quiet, noisy):
        next(iter(trainable.epoch(torch.Generator())))().backward()
        gradients.append(trainable.model.position.grad.clone())
    assert not torch.equal(*gradients)


def test_regression_data_depends_on_data_seed_not_on_the_trial_seed() -> None:
    one, other_trial = build("linear_regression", seed=0), build("linear_regression", seed=1)
    assert torch.equal(one.train_x, other_trial.train_x)
    assert not torch.equal(build("linear_regression", data_seed=1).train_x, one.train_x)
    assert len(one.val_x) == 40 and len(one.train_x) == 160  # validation_fraction 0.2


def test_only_workloads_with_data_take_a_batch_size() -> None:
    assert not uses_batches(workload_spec("rosenbrock"))
    assert uses_batches(workload_spec("linear_regression"))
    assert uses_batches(workload_spec("cnn"))


@pytest.mark.parametrize(
    ("workload", "message"),
    [
        ({"name": "nope"}, r"unknown workload 'nope'; known: rosenbrock"),
        ({"name": "rosenbrock", "options": {"steps": 3}}, r"\[workload.options\] steps: unknown"),
        ({"name": "linear_regression", "options": {"samples": 1}}, r"samples: .*greater than 1"),
        ({"name": "cnn", "options": {"dataset": "cifar"}}, r"cifar"),
    ],
)
def test_bad_workloads_are_refused_naming_the_key(workload: dict, message: str) -> None:
    spec = build_spec().workload.model_copy(
        update={"name": workload["name"], "options": workload.get("options", {})}
    )
    with pytest.raises(ValueError, match=message):
        resolve_metric(spec, None, None)


def test_the_metric_defaults_to_the_workloads_and_must_be_one_it_reports() -> None:
    spec = workload_spec("cnn")
    assert resolve_metric(spec, None, None) == ("val_accuracy", "maximize")
    assert resolve_metric(spec, "val_loss", None) == ("val_loss", "minimize")
    with pytest.raises(ValueError, match=r"cnn reports val_accuracy, val_loss, not 'loss'"):
        resolve_metric(spec, "loss", None)


def test_user_code_is_found_beside_the_study_file_first(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "lib").mkdir(parents=True)
    study_file = project / "study.toml"
    assert search_path(study_file, ["lib"]) == [
        str((project / "lib").resolve()),
        str(project.resolve()),
        str(Path.cwd().resolve()),
    ]
    (project / "beside_the_study.py").write_text("def train(trial):\n    return 1.0\n")
    train = import_user("beside_the_study:train", search_path(study_file))
    assert kind("beside_the_study:train", train) == "function"


def test_user_code_is_a_function_or_a_factory_by_its_signature() -> None:
    def factory(options, context, verbose=False): ...

    assert kind("m:factory", factory) == "factory"
    with pytest.raises(ValueError, match=r"'m:f' takes \(\); a training function takes"):
        kind("m:f", lambda: None)
    with pytest.raises(ValueError, match=r"'m:x' is not a function"):
        kind("m:x", 3)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon", r"is not of the form 'module:function'"),
        ("surely_absent_module:train", r"no module 'surely_absent_module' in .*put "),
        (
            "tests.workloads.factories:absent",
            r"module 'tests.workloads.factories' .* has no 'absent'",
        ),
    ],
)
def test_a_bad_user_target_says_where_it_looked(target: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        import_user(target, [])
