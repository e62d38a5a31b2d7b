"""`TrainingConfig`: what a trial records is what `best_config()` rebuilds, and the optimizer
and schedule it builds carry every setting in the library's own terms."""

from __future__ import annotations

import json

import pytest
import torch
from pytorch_optimizer import Lookahead

from tuner.config import TrainingConfig


def parameters() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.ones(3))]


ADAMW = TrainingConfig(
    optimizer="adamw",
    target="torch.optim:AdamW",
    learning_rate=3e-4,
    weight_decay=0.05,
    hyperparameters={"beta1": 0.85, "beta2": 0.995, "eps": 1e-7},
    schedule="warmup_cosine",
    warmup_fraction=0.1,
    max_grad_norm=1.0,
    batch_size=64,
    lookahead=(6, 0.5),
)


def test_a_recorded_config_comes_back_equal_through_json() -> None:
    recorded = json.loads(json.dumps(ADAMW.to_dict()))  # as the storage keeps a user attr
    assert isinstance(recorded["lookahead"], list)
    assert TrainingConfig.from_dict(recorded) == ADAMW


def test_keys_a_later_version_added_are_ignored_and_missing_ones_default() -> None:
    recorded = {"optimizer": "sgd", "target": "torch.optim:SGD", "learning_rate": 0.1}
    config = TrainingConfig.from_dict({**recorded, "added_later": 1})
    assert config == TrainingConfig(**recorded)
    assert config.schedule == "constant" and config.lookahead is None


def test_the_optimizer_gets_every_knob_in_the_librarys_terms() -> None:
    built = ADAMW.build_optimizer(parameters())
    assert isinstance(built, Lookahead) and (built.k, built.alpha) == (6, 0.5)
    (group,) = built.optimizer.param_groups
    assert type(built.optimizer) is torch.optim.AdamW
    assert group["lr"] == 3e-4 and group["weight_decay"] == 0.05
    assert group["betas"] == (0.85, 0.995) and group["eps"] == 1e-7


def test_momentum_lives_beside_the_knobs_and_reaches_the_optimizer() -> None:
    config = TrainingConfig(
        optimizer="nesterov",
        target="torch.optim:SGD",
        learning_rate=0.1,
        momentum=0.95,
        hyperparameters={"nesterov": True},
    )
    (group,) = config.build_optimizer(parameters()).param_groups
    assert group["momentum"] == 0.95 and group["nesterov"] is True
    assert "momentum" not in config.hyperparameters  # building did not change the record


def test_weight_decay_off_overrides_a_librarys_non_zero_default() -> None:
    config = TrainingConfig(optimizer="adamw", target="torch.optim:AdamW", learning_rate=1e-3)
    (group,) = config.build_optimizer(parameters()).param_groups
    assert group["weight_decay"] == 0.0  # AdamW's own default is 0.01
    assert group["betas"] == (0.9, 0.999)  # β's not searched keep the library's


@pytest.mark.parametrize("schedule", ["constant", "warmup_cosine"])
def test_the_schedule_runs_over_the_whole_budget(schedule: str) -> None:
    config = TrainingConfig(
        optimizer="sgd",
        target="torch.optim:SGD",
        learning_rate=0.1,
        schedule=schedule,
        warmup_fraction=0.2,
    )
    optimizer = config.build_optimizer(parameters())
    scheduler = config.build_scheduler(optimizer, steps_per_epoch=5, epochs=2)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    if schedule == "constant":
        assert rates == [0.1] * 10
    else:
        peak = rates.index(max(rates))
        assert rates[0] < 0.1 and peak == 2 and max(rates) == pytest.approx(0.1)
        assert rates[peak:] == sorted(rates[peak:], reverse=True) and rates[-1] < 0.02


def test_knobs_give_momentum_its_one_name_beside_the_others() -> None:
    config = TrainingConfig(
        optimizer="nesterov",
        target="torch.optim:SGD",
        learning_rate=0.1,
        momentum=0.95,
        hyperparameters={"nesterov": True, "dampening": 0.0},
    )
    assert config.knobs == {"nesterov": True, "dampening": 0.0, "momentum": 0.95}
    assert "momentum" not in config.hyperparameters  # what results record stays as it was
    optimizer = config.build_optimizer(parameters())
    assert optimizer.defaults["momentum"] == 0.95 and optimizer.defaults["nesterov"] is True
