"""One trial's training loop, run for real on tiny workloads inside in-memory Optuna studies."""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import optuna
import pytest
import torch

from tests.specs import build_spec
from tuner.config import TrainingConfig
from tuner.execution.train import EpochResult, TrainingRecord, TrialDiverged, divergence, train
from tuner.spec import StudySpec
from tuner.workloads import TrialContext, build_trainable
from tuner.workloads.landscapes import double_well, rosenbrock

CPU = torch.device("cpu")
ROSENBROCK_START = (-1.0, 1.0)


def make_spec(
    workload: str, options: dict[str, Any], epochs: int, schedules: list[str] | None = None
) -> StudySpec:
    return build_spec(
        name="train-test",
        workload={"name": workload, "options": options},
        search={"optimizers": ["sgd"], "schedules": schedules or ["constant"]},
        budget={"trials": 1, "epochs": epochs},
    )


def sgd(learning_rate: float, **values: Any) -> TrainingConfig:
    return TrainingConfig(
        optimizer="sgd", target="torch.optim:SGD", learning_rate=learning_rate, **values
    )


def run(
    spec: StudySpec,
    config: TrainingConfig,
    seed: int = 0,
    pruner: optuna.pruners.BasePruner | None = None,
) -> tuple[float, TrainingRecord, optuna.Study, optuna.Trial]:
    study = optuna.create_study(direction=spec.direction, pruner=pruner)
    trial = study.ask()
    record = TrainingRecord()
    value = train(trial, spec, config, seed, CPU, record)
    return value, record, study, trial


def test_adam_descends_rosenbrock_and_reports_every_epoch() -> None:
    spec = make_spec("rosenbrock", {"steps_per_epoch": 50}, epochs=3)
    config = TrainingConfig(optimizer="adam", target="torch.optim:Adam", learning_rate=0.01)
    value, record, study, trial = run(spec, config)

    start_loss = float(rosenbrock(torch.tensor(ROSENBROCK_START)))
    assert start_loss == 4.0
    assert math.isfinite(value) and value < start_loss
    assert record.epochs_run == 3
    assert [entry["epoch"] for entry in record.curve] == [1, 2, 3]
    for entry in record.curve:
        assert {"epoch", "train_loss", "learning_rate", "loss", "x", "y"} <= set(entry)
        assert entry["learning_rate"] == 0.01
        # the reported loss is the surface at the reported point
        point = torch.tensor([entry["x"], entry["y"]], dtype=torch.float64)
        assert entry["loss"] == pytest.approx(float(rosenbrock(point)))
    assert record.curve[-1]["loss"] == value

    study.tell(trial, value)
    reported = study.trials[0].intermediate_values
    assert reported == {entry["epoch"]: entry["loss"] for entry in record.curve}
    assert sorted(reported) == [1, 2, 3]


def test_sgd_with_a_huge_learning_rate_diverges_in_the_first_epoch() -> None:
    spec = make_spec("rosenbrock", {"steps_per_epoch": 50}, epochs=3)
    record = TrainingRecord()
    trial = optuna.create_study().ask()
    with pytest.raises(TrialDiverged, match="diverged in epoch 1"):
        train(trial, spec, sgd(1.0), 0, CPU, record)
    assert record.epochs_run == 0
    assert record.curve == []


def test_adam_at_a_huge_learning_rate_diverges_by_the_loss_growth_rule() -> None:
    """Adam's steps are bounded by its lr, so nothing overflows: the loss grows from 4 to
    ~1e18 with finite parameters. The growth rule stops it in the first epoch."""
    spec = make_spec("rosenbrock", {"steps_per_epoch": 100}, epochs=3)
    config = TrainingConfig(optimizer="adam", target="torch.optim:Adam", learning_rate=1e6)
    record = TrainingRecord()
    with pytest.raises(TrialDiverged, match=r"diverged in epoch 1: .* up from 4 at the first"):
        train(optuna.create_study().ask(), spec, config, 0, CPU, record)
    assert record.curve == []


@pytest.mark.parametrize(
    ("loss", "start", "diverged"),
    [
        (400.0, 4.0, False),  # 396 above a start of 4: within 100 x 4
        (404.5, 4.0, True),
        (-1.0, 9.0, False),  # a loss that falls below zero (the double well) is progress
        (5.0, -0.5, False),  # 5.5 above a start of -0.5: within 100 x 0.5
        (50.5, -0.5, True),
        (float("nan"), 4.0, True),
    ],
)
def test_the_divergence_rule_is_growth_past_100_times_the_start(
    loss: float, start: float, diverged: bool
) -> None:
    result = EpochResult(loss, 1.0, {"loss": 0.0}, 0.1, start)
    assert (divergence(result, "loss", 2) is not None) == diverged


def test_a_pruner_stops_training_after_the_first_report() -> None:
    spec = make_spec("rosenbrock", {"steps_per_epoch": 20}, epochs=3)
    config = TrainingConfig(optimizer="adam", target="torch.optim:Adam", learning_rate=0.01)
    # The loss is always positive, so "prune above -1" prunes at the first report.
    record = TrainingRecord()
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=-1.0))
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="pruned after epoch 1"):
        train(trial, spec, config, 0, CPU, record)
    assert record.epochs_run == 1
    assert len(record.curve) == 1
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert list(study.trials[0].intermediate_values) == [1]

    # the same trial under a pruner that never prunes trains every epoch
    _, unpruned, _, _ = run(spec, config, pruner=optuna.pruners.NopPruner())
    assert unpruned.epochs_run == 3


def test_gradient_clipping_bounds_the_first_step() -> None:
    spec = make_spec("rosenbrock", {"steps_per_epoch": 1}, epochs=1)
    learning_rate, max_norm = 0.01, 1e-3
    start = torch.tensor(ROSENBROCK_START, dtype=torch.float64)

    def moved(config: TrainingConfig) -> torch.Tensor:
        _, record, _, _ = run(spec, config, seed=3)
        entry = record.curve[0]
        return torch.tensor([entry["x"], entry["y"]], dtype=torch.float64) - start

    clipped = moved(sgd(learning_rate, max_grad_norm=max_norm))
    free = moved(sgd(learning_rate))
    assert 0 < float(clipped.norm()) <= learning_rate * max_norm * (1 + 1e-9)
    assert float(free.norm()) > 100 * float(clipped.norm())
    assert not torch.allclose(clipped, free)


@pytest.fixture(scope="module")
def regression_spec() -> StudySpec:
    return make_spec("linear_regression", {"samples": 200}, epochs=2)


def test_the_same_seed_reproduces_the_curve(regression_spec: StudySpec) -> None:
    config = sgd(0.05, batch_size=32)
    _, first, _, _ = run(regression_spec, config, seed=7)
    _, again, _, _ = run(regression_spec, config, seed=7)
    _, other, _, _ = run(regression_spec, config, seed=8)
    assert len(first.curve) == 2
    assert first.curve == again.curve
    assert other.curve != first.curve
    assert [e["val_loss"] for e in other.curve] != [e["val_loss"] for e in first.curve]


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_double_well_reports_loss_and_x(noise: float) -> None:
    spec = make_spec("double_well", {"steps_per_epoch": 30, "noise": noise}, epochs=2)
    positions = []
    for seed in (0, 1):
        value, record, _, _ = run(spec, sgd(0.05), seed=seed)
        assert record.epochs_run == 2
        for entry in record.curve:
            assert "y" not in entry  # a 1-D surface has no y
            assert math.isfinite(entry["x"])
            x = torch.tensor([entry["x"]], dtype=torch.float64)
            assert entry["loss"] == pytest.approx(float(double_well(x)))
        assert value == record.curve[-1]["loss"]
        positions.append(record.curve[-1]["x"])
    # only the gradient noise depends on the seed: without it both seeds land on the same x
    assert (positions[0] == positions[1]) is (noise == 0.0)


def test_schedule_free_adamw_lowers_validation_loss() -> None:
    spec = make_spec("linear_regression", {"samples": 200}, epochs=3)
    config = TrainingConfig(
        optimizer="schedulefree_adamw",
        target="pytorch_optimizer:ScheduleFreeAdamW",
        learning_rate=0.03,
        batch_size=32,
        schedule_free=True,
    )
    value, record, _, _ = run(spec, config, seed=5)
    untrained = build_trainable(
        spec.workload, TrialContext(seed=5, device=CPU, batch_size=32)
    ).evaluate()["val_loss"]
    assert math.isfinite(value)
    assert record.epochs_run == 3
    assert value < record.curve[0]["val_loss"] < untrained


def test_plateau_schedule_halves_the_lr_when_the_metric_stops_improving() -> None:
    """Started at Rosenbrock's minimum the loss stays 0: a plateau from the second epoch on."""
    spec = make_spec(
        "rosenbrock", {"steps_per_epoch": 20, "start": [1.0, 1.0]}, epochs=5, schedules=["plateau"]
    )
    value, record, _, _ = run(spec, sgd(1e-3, schedule="plateau"))
    assert value == 0.0
    lrs = [entry["learning_rate"] for entry in record.curve]
    assert lrs[0] == 1e-3  # the first epoch improves on nothing-yet
    assert all(b <= a for a, b in pairwise(lrs))
    assert lrs[-1] < lrs[0]
    for lr in lrs:  # only ReduceLROnPlateau's halvings, once per epoch at most
        halvings = math.log2(1e-3 / lr)
        assert halvings == pytest.approx(round(halvings))
    assert math.log2(1e-3 / lrs[-1]) <= len(lrs) - 1


def test_plateau_schedule_keeps_the_lr_while_the_metric_improves() -> None:
    spec = make_spec("rosenbrock", {"steps_per_epoch": 50}, epochs=3, schedules=["plateau"])
    _, record, _, _ = run(spec, sgd(1e-3, schedule="plateau"))
    losses = [entry["loss"] for entry in record.curve]
    assert all(b < a for a, b in pairwise(losses))
    assert [entry["learning_rate"] for entry in record.curve] == [1e-3] * 3


def test_a_per_step_schedule_is_stepped_every_optimizer_step() -> None:
    spec = make_spec("rosenbrock", {"steps_per_epoch": 10}, epochs=2, schedules=["cosine"])
    _, record, _, _ = run(spec, sgd(1e-3, schedule="cosine"))
    lrs = [entry["learning_rate"] for entry in record.curve]
    # CosineAnnealingLR over all 20 steps: half-way after epoch 1, zero at the end
    assert lrs[0] == pytest.approx(0.5e-3)
    assert lrs[1] == pytest.approx(0.0, abs=1e-12)
