"""Every vectorized rule against its library class: K trials with different hyperparameters,
stacked, step for step on the same loss over 20 steps.

The comparison runs in float64: its point is that the rule does the library's math, and in
float32 the two orders of operations round apart by amounts that differ from CPU to CPU (up to
4e-7 after 20 Adagrad steps on an Intel Xeon). In float64 the same rounding is ~1e-16 a step,
so a tolerance of 1e-9 holds on any CPU and still fails on any real difference in the math."""

from __future__ import annotations

import math

import pytest
import torch

from tuner.config import TrainingConfig
from tuner.search.vectorized_optimizers import (
    RULES,
    VectorizedOptimizer,
    vectorized_settings,
)

STEPS = 20
DTYPE = torch.float64
#: Float64 rounding over 20 steps stays far below this (see the module docstring).
TOLERANCE = 1e-9


def config(target: str, lr: float, weight_decay: float = 0.0, **knobs) -> TrainingConfig:
    momentum = knobs.pop("momentum", None)
    return TrainingConfig(
        optimizer="test",
        target=target,
        learning_rate=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        hyperparameters=knobs,
    )


#: Per rule, trials that differ in every hyperparameter the rule takes, weight decay on and off.
TRIALS: dict[str, list[TrainingConfig]] = {
    "sgd": [
        config("torch.optim:SGD", 0.1),
        config("torch.optim:SGD", 0.05, 1e-2, dampening=0.5),  # no buffer: dampening unused
    ],
    "momentum": [
        config("torch.optim:SGD", 0.05, 1e-2, momentum=0.9),
        config("torch.optim:SGD", 0.2, momentum=0.5, dampening=0.1),
    ],
    "nesterov": [
        config("torch.optim:SGD", 0.1, momentum=0.9, nesterov=True),
        config("torch.optim:SGD", 0.03, 1e-3, momentum=0.6, nesterov=True),
    ],
    "rmsprop": [
        config("torch.optim:RMSprop", 1e-2),
        config("torch.optim:RMSprop", 3e-3, 1e-2, alpha=0.9, eps=1e-6),
    ],
    "rmsprop_momentum": [
        config("torch.optim:RMSprop", 1e-2, momentum=0.9),
        config("torch.optim:RMSprop", 3e-3, 1e-2, alpha=0.9, eps=1e-6, momentum=0.8),
    ],
    "rmsprop_centered": [
        config("torch.optim:RMSprop", 1e-2, centered=True),
        config("torch.optim:RMSprop", 2e-3, 1e-3, alpha=0.95, centered=True),
    ],
    "adagrad": [
        config("torch.optim:Adagrad", 0.1),
        config("torch.optim:Adagrad", 0.05, 1e-2, lr_decay=0.01, initial_accumulator_value=0.1),
    ],
    "adam": [
        config("torch.optim:Adam", 1e-2),
        config("torch.optim:Adam", 3e-3, 1e-2, beta1=0.8, beta2=0.99, eps=1e-6),
    ],
    "adamw": [
        config("torch.optim:AdamW", 1e-2),
        config("torch.optim:AdamW", 3e-3, 0.5, beta1=0.95, beta2=0.995, eps=1e-10),
    ],
    "nadam": [
        config("torch.optim:NAdam", 1e-2),
        config("torch.optim:NAdam", 3e-3, 1e-2, beta1=0.95, beta2=0.99, momentum_decay=0.01),
    ],
    "nadam_decoupled": [
        config("torch.optim:NAdam", 1e-2, 0.1, decoupled_weight_decay=True),
    ],
    "lion": [
        config("pytorch_optimizer:Lion", 1e-3),
        config("pytorch_optimizer:Lion", 3e-4, 1.0, beta1=0.85, beta2=0.98),
    ],
    "lion_fixed_decay": [
        config("pytorch_optimizer:Lion", 1e-3, 1e-3, fixed_decay=True),
    ],
}

INPUTS = torch.randn(16, 4, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
TARGETS = torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=DTYPE)


def loss(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A small non-convex regression, so gradients depend on the trajectory."""
    return ((torch.tanh(INPUTS @ weight + bias) - TARGETS) ** 2).mean()


def scheduled_lr(base: float, step: int) -> float:
    """A warmup then cosine decay, as schedules change the rate every step."""
    return base * min(1.0, (step + 1) / 5) * 0.5 * (1 + math.cos(math.pi * step / STEPS))


def start(trial: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + trial)
    return [
        torch.randn(4, 3, generator=generator, dtype=DTYPE),
        torch.randn(3, generator=generator, dtype=DTYPE),
    ]


@pytest.mark.parametrize("name", sorted(TRIALS))
@pytest.mark.parametrize("schedule", [False, True], ids=["constant", "scheduled"])
def test_rule_follows_the_library_step_by_step(name: str, schedule: bool) -> None:
    trials = TRIALS[name]
    settings = [vectorized_settings(trial) for trial in trials]
    assert all(s is not None for s in settings)
    assert len({s.flags for s in settings}) == 1, "one group: the flags must agree"

    alone = [[p.clone().requires_grad_() for p in start(i)] for i in range(len(trials))]
    libraries = [trial.build_optimizer(params) for trial, params in zip(trials, alone, strict=True)]
    initial = [torch.stack(rows) for rows in zip(*map(start, range(len(trials))), strict=True)]
    stacked = [rows.clone() for rows in initial]
    vectorized = VectorizedOptimizer(settings[0].rule, dict(settings[0].flags), stacked)
    for s in settings:
        vectorized.append(s)

    for step in range(STEPS):
        rates = [
            scheduled_lr(trial.learning_rate, step) if schedule else trial.learning_rate
            for trial in trials
        ]
        for params, library, rate in zip(alone, libraries, rates, strict=True):
            library.param_groups[0]["lr"] = rate
            library.zero_grad()
            loss(*params).backward()
            library.step()
        grads = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)))(*stacked)
        vectorized.step(stacked, list(grads), torch.tensor(rates, dtype=torch.float64))
        for index, params in enumerate(alone):
            for expected, rows in zip(params, stacked, strict=True):
                torch.testing.assert_close(
                    rows[index], expected.detach(), rtol=TOLERANCE, atol=TOLERANCE * 1e-2
                )
    moved = [(now - then).abs().max() for now, then in zip(stacked, initial, strict=True)]
    assert min(moved) > 1e-4, "the parameters must have moved for the comparison to mean much"


@pytest.mark.parametrize("name", sorted(TRIALS))
def test_a_group_holds_the_state_its_library_keeps(name: str) -> None:
    """No state tensor the group's branch never reads (RMSprop without centering or
    momentum keeps one tensor, not three): the library's own state after a step says which."""
    trial = TRIALS[name][0]
    settings = vectorized_settings(trial)
    params = [p.clone().requires_grad_() for p in start(0)]
    library = trial.build_optimizer(params)
    loss(*params).backward()
    library.step()
    kept = {
        key
        for key, value in library.state[params[0]].items()
        if isinstance(value, torch.Tensor) and value.shape == params[0].shape
    }
    stacked = [torch.stack([p]) for p in start(0)]
    vectorized = VectorizedOptimizer(settings.rule, dict(settings.flags), stacked)
    vectorized.append(settings)
    assert all(set(state) == kept for state in vectorized.states)


def test_every_rule_is_covered() -> None:
    covered = {trial.target for trials in TRIALS.values() for trial in trials}
    assert covered == set(RULES)


@pytest.mark.parametrize(
    "trial",
    [
        config("torch.optim:Adam", 1e-3, amsgrad=True),
        config("torch.optim:SGD", 1e-2, maximize=True),
        config("pytorch_optimizer:Lion", 1e-4, use_gc=True),
        config("torch.optim:RAdam", 1e-3),
        config("pytorch_optimizer:Lamb", 1e-3),
        config("torch.optim:SGD", 1e-2, nesterov=True),  # the library refuses it
    ],
    ids=["amsgrad", "maximize", "lion-gc", "radam", "lamb", "nesterov-without-momentum"],
)
def test_what_no_rule_reproduces_falls_back(trial: TrainingConfig) -> None:
    assert vectorized_settings(trial) is None


def test_lookahead_falls_back() -> None:
    trial = TrainingConfig(
        optimizer="adam", target="torch.optim:Adam", learning_rate=1e-3, lookahead=(5, 0.5)
    )
    assert vectorized_settings(trial) is None


def test_stacked_values_are_the_ones_the_library_optimizer_gets() -> None:
    """Both paths map the config through one function: what a trial trained alone would
    build with is what its stacked row holds."""
    for trial in [*TRIALS["sgd"], *TRIALS["adam"], *TRIALS["rmsprop"]]:
        settings = vectorized_settings(trial)
        assert settings is not None
        built = trial.build_optimizer([torch.zeros(1, requires_grad=True)]).defaults
        if "betas" in built:
            built = {**built, "beta1": built["betas"][0], "beta2": built["betas"][1]}
        assert settings.values == {name: float(built[name]) for name in settings.values}
