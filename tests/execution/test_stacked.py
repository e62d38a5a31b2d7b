"""A trial trained in a stack follows the trajectory it follows alone (float32, CPU).

For each optimizer family with a vectorized rule, and for schedules with warmup: the same
trial (same configuration, seed and so data order) trained alone by `TrialTraining` and
stacked with others of different hyperparameters by `StackedTrials`. Parameters agree within
1e-5 (relative: the norm of the difference over the norm of all parameters) over the
first 20 steps, and per-epoch validation metrics within
1e-3 (relative) over 3 epochs.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from tests.specs import build_spec
from tuner.config import TrainingConfig
from tuner.execution.stacked import StackedTrials, can_stack, learning_rate_table
from tuner.execution.train import EXPLODED_NORM, TrialTraining
from tuner.search.vectorized_optimizers import vectorized_settings
from tuner.spec import StudySpec
from tuner.workloads import TrialContext, build_trainable

CPU = torch.device("cpu")
EPOCHS = 3
PARAMETER_TOLERANCE = 1e-5
METRIC_TOLERANCE = 1e-3
COMPARED_STEPS = 20


def make_spec(workload: str, options: dict[str, Any]) -> StudySpec:
    return build_spec(
        name="stacked-test",
        workload={"name": workload, "options": options},
        search={"optimizers": ["adam"]},
        budget={"trials": 3, "epochs": EPOCHS},
    )


REGRESSION = ("mlp_regression", {"samples": 250})  # 200 training samples: a short last batch
DIGITS = ("cnn", {"dataset": "digits"})


def family(target: str, *variants: dict[str, Any], batch_size: int = 32) -> list[TrainingConfig]:
    """Trials of one optimizer family that differ in every knob they take."""
    configs = []
    for variant in variants:
        values = dict(variant)
        configs.append(
            TrainingConfig(
                optimizer="test",
                target=target,
                learning_rate=values.pop("lr"),
                momentum=values.pop("momentum", None),
                weight_decay=values.pop("weight_decay", 0.0),
                schedule=values.pop("schedule", "constant"),
                warmup_fraction=values.pop("warmup_fraction", 0.0),
                max_grad_norm=values.pop("max_grad_norm", None),
                batch_size=batch_size,
                hyperparameters=values,
            )
        )
    return configs


FAMILIES: dict[str, list[TrainingConfig]] = {
    "sgd": family(
        "torch.optim:SGD", {"lr": 0.05}, {"lr": 0.02, "weight_decay": 1e-3, "dampening": 0.5}
    ),
    "sgd-momentum": family(
        "torch.optim:SGD",
        {"lr": 0.02, "momentum": 0.9, "weight_decay": 1e-3},
        {"lr": 0.01, "momentum": 0.5, "max_grad_norm": 0.5, "dampening": 0.1},
    ),
    "nesterov": family(
        "torch.optim:SGD",
        {"lr": 0.02, "momentum": 0.9, "nesterov": True},
        {"lr": 0.05, "momentum": 0.7, "nesterov": True, "schedule": "cosine"},
    ),
    "rmsprop": family(
        "torch.optim:RMSprop",
        {"lr": 1e-3},
        {"lr": 3e-4, "alpha": 0.9, "eps": 1e-6, "weight_decay": 1e-4},
    ),
    "adagrad": family("torch.optim:Adagrad", {"lr": 0.05}, {"lr": 0.1, "weight_decay": 1e-3}),
    "adam-warmup": family(
        "torch.optim:Adam",
        {"lr": 1e-3, "schedule": "warmup_cosine", "warmup_fraction": 0.1},
        {"lr": 3e-3, "beta1": 0.8, "schedule": "warmup_cosine", "warmup_fraction": 0.3},
        {"lr": 1e-2, "beta2": 0.99, "eps": 1e-6, "schedule": "step", "max_grad_norm": 1.0},
    ),
    "adamw": family(
        "torch.optim:AdamW",
        {"lr": 1e-3, "weight_decay": 0.1},
        {"lr": 3e-3, "weight_decay": 0.01, "schedule": "exponential"},
    ),
    "nadam": family(
        "torch.optim:NAdam", {"lr": 2e-3}, {"lr": 1e-3, "beta1": 0.95, "schedule": "plateau"}
    ),
    "lion": family(
        "pytorch_optimizer:Lion",
        {"lr": 1e-4},
        {"lr": 3e-4, "weight_decay": 0.1, "schedule": "warmup_cosine", "warmup_fraction": 0.2},
    ),
}


def relative_gap(stacked: list[torch.Tensor], alone: list[torch.Tensor]) -> float:
    """‖θ_stacked − θ_alone‖ / ‖θ_alone‖ over all of a model's parameters."""
    difference = torch.cat([(a - b).flatten() for a, b in zip(stacked, alone, strict=True)])
    return float(difference.norm() / torch.cat([b.flatten() for b in alone]).norm())


def compare(
    spec: StudySpec, configs: list[TrainingConfig], join_at: dict[int, int] | None = None
) -> tuple[float, float, int]:
    """Train each config alone and all of them stacked (trial i joining the stack after
    join_at[i] steps of the others); return the largest parameter gap over each trial's first
    COMPARED_STEPS steps, the largest metric gap over all epochs, and epochs compared."""
    join_at = join_at or {}
    settings = vectorized_settings(configs[0])
    stack = StackedTrials(spec, settings, configs[0].batch_size, CPU)
    alone = {i: TrialTraining(spec, config, 10 + i, CPU) for i, config in enumerate(configs)}
    steps = dict.fromkeys(alone, 0)
    parameter_gap = metric_gap = 0.0
    epochs_compared = 0
    for tick in range(10_000):
        for i, config in enumerate(configs):
            if join_at.get(i, 0) == tick:
                stack.add(i, config, 10 + i, vectorized_settings(config))
        if not stack.keys:
            break
        ended = stack.step()
        finished = []
        for i in stack.keys:
            epoch_ended = alone[i].step()
            assert epoch_ended == (i in ended), "a trial's epochs end at the same step both ways"
            steps[i] += 1
            if steps[i] <= COMPARED_STEPS:
                row = stack.keys.index(i)
                named = list(alone[i].trainable.model.named_parameters())
                gap = relative_gap(
                    [stack._params[name][row] for name, _ in named], [p.detach() for _, p in named]
                )
                parameter_gap = max(parameter_gap, gap)
            if epoch_ended:
                expected, got = alone[i].end_epoch(), stack.end_epoch(i)
                for name, value in expected.metrics.items():
                    metric_gap = max(metric_gap, abs(got.metrics[name] - value) / abs(value))
                assert got.learning_rate == pytest.approx(expected.learning_rate, rel=1e-12)
                assert got.train_loss == pytest.approx(expected.train_loss, rel=METRIC_TOLERANCE)
                # Where the trial started, for the divergence rule, is the same both ways.
                assert got.start_loss == pytest.approx(expected.start_loss, rel=METRIC_TOLERANCE)
                epochs_compared += 1
                if steps[i] == alone[i].trainable.steps_per_epoch() * EPOCHS:
                    finished.append(i)
        if finished:
            stack.remove(finished)
    return parameter_gap, metric_gap, epochs_compared


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_stacked_trial_follows_its_trajectory_alone(name: str) -> None:
    configs = FAMILIES[name]
    parameter_gap, metric_gap, epochs = compare(make_spec(*REGRESSION), configs)
    assert epochs == EPOCHS * len(configs)
    assert parameter_gap <= PARAMETER_TOLERANCE
    assert metric_gap <= METRIC_TOLERANCE


@pytest.mark.parametrize("name", ["adam-warmup", "sgd-momentum"])
def test_stacked_cnn_trials_follow_their_trajectories(name: str) -> None:
    configs = [
        TrainingConfig(**{**config.to_dict(), "batch_size": 64, "lookahead": None})
        for config in FAMILIES[name]
    ]
    parameter_gap, metric_gap, epochs = compare(make_spec(*DIGITS), configs)
    assert epochs == EPOCHS * len(configs)
    assert parameter_gap <= PARAMETER_TOLERANCE
    assert metric_gap <= METRIC_TOLERANCE


def test_a_trial_joining_mid_epoch_follows_its_trajectory() -> None:
    """A place refilled while the others are part-way through an epoch: the newcomer has its
    own epoch counter, data order and schedule, and the others are not disturbed."""
    configs = FAMILIES["adam-warmup"]
    parameter_gap, metric_gap, epochs = compare(
        make_spec(*REGRESSION), configs, join_at={1: 3, 2: 10}
    )
    assert epochs == EPOCHS * len(configs)
    assert parameter_gap <= PARAMETER_TOLERANCE
    assert metric_gap <= METRIC_TOLERANCE


def test_a_diverging_trial_leaves_the_others_unharmed() -> None:
    spec = make_spec(*REGRESSION)
    sane, wild = family(
        "torch.optim:SGD", {"lr": 0.02, "momentum": 0.9}, {"lr": 1e6, "momentum": 0.9}
    )
    stack = StackedTrials(spec, vectorized_settings(sane), 32, CPU)
    stack.add("sane", sane, 1, vectorized_settings(sane))
    stack.add("wild", wild, 2, vectorized_settings(wild))
    alone = TrialTraining(spec, sane, 1, CPU)
    for epoch in range(EPOCHS):
        while not stack.step():
            alone.step()
        alone.step()
        if epoch == 0:
            exploded = stack.end_epoch("wild").parameter_norm
            assert not math.isfinite(exploded) or exploded > EXPLODED_NORM
            stack.remove(["wild"])
        expected, got = alone.end_epoch(), stack.end_epoch("sane")
        assert math.isfinite(got.parameter_norm)
        assert got.metrics["val_loss"] == pytest.approx(
            expected.metrics["val_loss"], rel=METRIC_TOLERANCE
        )


def test_plateau_rates_follow_the_metric_and_others_are_tabulated() -> None:
    config = FAMILIES["adam-warmup"][0]
    rates, plateau = learning_rate_table(config, 10, 3, "minimize")
    assert plateau is None and len(rates) == 31
    assert rates[0] < rates[3] and rates[-1] < rates[10]  # warmup, then decay
    plateau_config = FAMILIES["nadam"][1]
    rates, plateau = learning_rate_table(plateau_config, 10, 3, "minimize")
    assert plateau is not None and set(rates) == {plateau_config.learning_rate}


def test_landscapes_do_not_stack() -> None:
    context = TrialContext(seed=0, device=CPU, batch_size=1)
    spec = build_spec(workload={"name": "rosenbrock"}, search={"optimizers": ["sgd"]})
    assert not can_stack(build_trainable(spec.workload, context))
    assert can_stack(build_trainable(make_spec(*REGRESSION).workload, context))


def test_a_trial_of_another_rule_is_refused_by_a_stack() -> None:
    spec = make_spec(*REGRESSION)
    adam, sgd = FAMILIES["adam-warmup"][0], FAMILIES["sgd-momentum"][0]
    stack = StackedTrials(spec, vectorized_settings(adam), 32, CPU)
    with pytest.raises(ValueError, match="does not belong"):
        stack.add(0, sgd, 0, vectorized_settings(sgd))


def test_a_trial_that_cannot_join_leaves_the_stack_as_it_was() -> None:
    spec = make_spec(*REGRESSION)
    good = FAMILIES["adam-warmup"][0]
    broken = TrainingConfig(**{**good.to_dict(), "schedule": "no-such-schedule"})
    stack = StackedTrials(spec, vectorized_settings(good), 32, CPU)
    stack.add("good", good, 1, vectorized_settings(good))
    with pytest.raises(ValueError, match="unknown schedule"):
        stack.add("broken", broken, 2, vectorized_settings(broken))
    assert stack.keys == ["good"]
    alone = TrialTraining(spec, good, 1, CPU)
    while not stack.step():
        alone.step()
    alone.step()
    assert stack.end_epoch("good").metrics == pytest.approx(alone.end_epoch().metrics, rel=1e-3)
