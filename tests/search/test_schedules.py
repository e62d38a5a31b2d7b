"""LR schedules on a real SGD optimizer: the learning rate each optimizer step runs at."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from torch.optim import lr_scheduler

from tuner.config import TrainingConfig
from tuner.search.schedules import (
    FINAL_LR_FACTOR,
    SCHEDULES,
    WARMUP_START_FACTOR,
    build_scheduler,
    steps_per_epoch_scheduler,
)

LR = 0.1
STEPS_PER_EPOCH = 10
EPOCHS = 5
TOTAL = STEPS_PER_EPOCH * EPOCHS


def sgd() -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=LR)


def lr_of(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


def run_per_step(schedule: str, warmup_fraction: float = 0.0) -> tuple[list[float], float]:
    """The LR used by each of the run's optimizer steps, and the LR after the last one."""
    optimizer = sgd()
    scheduler = build_scheduler(optimizer, schedule, STEPS_PER_EPOCH, EPOCHS, warmup_fraction)
    assert steps_per_epoch_scheduler(scheduler)
    used = []
    for _ in range(TOTAL):
        used.append(lr_of(optimizer))
        optimizer.step()
        scheduler.step()
    return used, lr_of(optimizer)


def non_increasing(values: list[float]) -> bool:
    return all(b <= a * (1 + 1e-12) for a, b in pairwise(values))


def test_constant_keeps_the_learning_rate() -> None:
    used, final = run_per_step("constant")
    assert used == [LR] * TOTAL
    assert final == LR


def test_cosine_decays_from_the_peak_to_zero() -> None:
    used, final = run_per_step("cosine")
    assert used[0] == pytest.approx(LR)
    assert non_increasing(used)
    assert used[TOTAL // 2] == pytest.approx(LR / 2, rel=1e-6)  # half-way down the cosine
    assert used[-1] < 0.01 * LR
    assert final == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("schedule", ["step", "exponential"])
def test_decay_ends_at_the_final_factor(schedule: str) -> None:
    used, final = run_per_step(schedule)
    assert used[0] == LR
    assert non_increasing(used)
    assert used[-1] >= LR * FINAL_LR_FACTOR * (1 - 1e-9)  # never below the end point
    assert final == pytest.approx(LR * FINAL_LR_FACTOR, rel=1e-9)


def test_step_schedule_is_piecewise_constant_and_non_increasing() -> None:
    used, _ = run_per_step("step")
    assert non_increasing(used)
    drops = [i for i in range(1, TOTAL) if used[i] < used[i - 1]]
    assert drops, "the step schedule never dropped the learning rate"
    for i in drops:
        assert used[i] == pytest.approx(used[i - 1] * FINAL_LR_FACTOR**0.5)
    # the first drop comes a third of the way through the run
    assert abs(drops[0] - TOTAL / 3) <= 1


def test_exponential_decays_by_a_constant_factor() -> None:
    used, _ = run_per_step("exponential")
    ratios = [b / a for a, b in pairwise(used)]
    assert ratios == pytest.approx([FINAL_LR_FACTOR ** (1 / TOTAL)] * (TOTAL - 1), rel=1e-9)


def test_warmup_cosine_rises_linearly_then_decays_to_zero() -> None:
    warmup = round(0.2 * TOTAL)
    used, final = run_per_step("warmup_cosine", warmup_fraction=0.2)
    assert used[0] == pytest.approx(LR * WARMUP_START_FACTOR)
    rising = used[: warmup + 1]
    assert all(b > a for a, b in pairwise(rising))
    steps = [b - a for a, b in pairwise(rising)]
    assert steps == pytest.approx([steps[0]] * warmup, rel=1e-6)  # linear warm-up
    assert used[warmup] == pytest.approx(LR)
    assert max(used) == pytest.approx(LR)
    assert non_increasing(used[warmup:])
    assert used[-1] < 0.01 * LR
    assert final == pytest.approx(0.0, abs=1e-12)


def test_warmup_cosine_with_the_whole_run_warming_up_is_a_linear_ramp() -> None:
    optimizer = sgd()
    scheduler = build_scheduler(optimizer, "warmup_cosine", 2, 1, warmup_fraction=0.9)
    used = []
    for _ in range(2):
        used.append(lr_of(optimizer))
        optimizer.step()
        scheduler.step()
    assert used[0] == pytest.approx(LR * WARMUP_START_FACTOR)
    assert used[1] > used[0]
    assert lr_of(optimizer) == pytest.approx(LR)


def plateau_lrs(direction: str, metrics: list[float]) -> tuple[list[float], int]:
    optimizer = sgd()
    scheduler = build_scheduler(optimizer, "plateau", STEPS_PER_EPOCH, len(metrics), 0.0, direction)
    assert isinstance(scheduler, lr_scheduler.ReduceLROnPlateau)
    assert not steps_per_epoch_scheduler(scheduler)
    lrs = []
    for metric in metrics:
        for _ in range(STEPS_PER_EPOCH):
            optimizer.step()
        scheduler.step(metric)
        lrs.append(lr_of(optimizer))
    return lrs, scheduler.patience


@pytest.mark.parametrize(
    ("direction", "improving"),
    [("minimize", [1.0, 0.5]), ("maximize", [0.5, 1.0])],
)
def test_plateau_halves_the_lr_after_patience_epochs_without_improvement(
    direction: str, improving: list[float]
) -> None:
    flat = [improving[-1]] * 6
    lrs, patience = plateau_lrs(direction, improving + flat)
    # While the metric improves, and for `patience` epochs after, the LR stays.
    first_cut = len(improving) + patience
    assert lrs[:first_cut] == [LR] * first_cut
    # ReduceLROnPlateau halves on the epoch after `patience` epochs without improvement.
    assert lrs[first_cut] == pytest.approx(LR / 2)
    assert non_increasing(lrs)
    assert lrs[-1] < LR / 2  # a longer plateau keeps halving


@pytest.mark.parametrize(("direction", "keeps"), [("minimize", False), ("maximize", True)])
def test_plateau_direction_decides_what_improving_means(direction: str, keeps: bool) -> None:
    """A rising metric is improvement when maximising and a plateau when minimising."""
    rising = [float(epoch) for epoch in range(1, 7)]
    lrs, _ = plateau_lrs(direction, rising)
    assert (lrs == [LR] * len(rising)) is keeps


def test_unknown_schedule_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown schedule 'linear'") as error:
        build_scheduler(sgd(), "linear", STEPS_PER_EPOCH, EPOCHS)
    for name in SCHEDULES:
        assert name in str(error.value)


@pytest.mark.parametrize("schedule", [s for s in SCHEDULES if s != "plateau"])
def test_training_config_builds_the_same_schedule(schedule: str) -> None:
    config = TrainingConfig(
        optimizer="sgd",
        target="torch.optim:SGD",
        learning_rate=LR,
        schedule=schedule,
        warmup_fraction=0.2,
    )
    optimizer = config.build_optimizer([torch.nn.Parameter(torch.zeros(2))])
    scheduler = config.build_scheduler(optimizer, STEPS_PER_EPOCH, EPOCHS)
    used = []
    for _ in range(TOTAL):
        used.append(lr_of(optimizer))
        optimizer.step()
        scheduler.step()
    expected, _ = run_per_step(schedule, warmup_fraction=0.2)
    assert used == pytest.approx(expected)
    assert all(math.isfinite(v) and v >= 0 for v in used)


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_a_winners_plateau_schedule_follows_its_study_direction(direction: str) -> None:
    """best_config() of an accuracy study: ReduceLROnPlateau must cut the rate when accuracy
    stops rising, not while it rises."""
    from tuner.study.best import BestConfig

    winner = BestConfig(
        optimizer="sgd",
        target="torch.optim:SGD",
        learning_rate=LR,
        schedule="plateau",
        study="s",
        trial_number=0,
        value=0.9,
        metric="val_accuracy" if direction == "maximize" else "loss",
        direction=direction,
    )
    scheduler = winner.build_scheduler(sgd(), STEPS_PER_EPOCH, 5)
    assert scheduler.mode == ("max" if direction == "maximize" else "min")
