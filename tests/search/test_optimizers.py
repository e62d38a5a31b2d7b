"""The optimizer registry: every entry builds its library class and minimises a quadratic.

In the spirit of optax's alias_test: the convergence and class tests are parametrised over
`REGISTRY`, so adding an entry adds its tests (and a missing learning rate below shows up as
a failing convergence test, not as a silently skipped one).
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from pytorch_optimizer import Lookahead

from tuner.config import TrainingConfig
from tuner.search.optimizers import (
    KNOB_SCALES,
    REGISTRY,
    Knob,
    OptimizerSpec,
    build_optimizer,
    import_target,
    optimizer_kwargs,
)

#: An ill-conditioned convex quadratic: sum_i c_i (p_i - target_i)^2 with condition number 10.
CONDITIONING = torch.tensor([1.0, 10.0], dtype=torch.float64)
TARGET = torch.tensor([0.3, -0.2], dtype=torch.float64)
STEPS = 500
#: The loss must fall at least this many times from its start.
REDUCTION = 100.0

#: Learning rates that minimise the quadratic within STEPS; each must lie inside its entry's
#: default range (checked below). An entry missing here gets the geometric mean of its range.
LEARNING_RATES = {
    "sgd": 1e-2,
    "momentum": 1e-2,
    "nesterov": 1e-2,
    "rmsprop": 1e-2,
    "adagrad": 1e-1,
    "adadelta": 1.0,
    "adam": 3e-3,
    "adamw": 3e-3,
    "nadam": 3e-3,
    "radam": 1e-2,
    "adamax": 1e-2,
    "lion": 1e-3,  # sign updates: lr is the step length, so the top of Lion's range
    "lamb": 1e-2,
    "adabelief": 1e-3,
    "adabound": 1e-3,
    "schedulefree_adamw": 1e-2,
}
#: SGD momentum for entries that search it (Nesterov refuses to build without momentum).
MOMENTUM = 0.9


def quadratic(p: torch.Tensor) -> torch.Tensor:
    return (CONDITIONING * (p - TARGET) ** 2).sum()


def learning_rate_for(spec: OptimizerSpec) -> float:
    low, high = spec.learning_rate.low, spec.learning_rate.high
    return LEARNING_RATES.get(spec.name, math.sqrt(low * high))


def config_for(spec: OptimizerSpec, **overrides) -> TrainingConfig:
    """The registry entry's default build: its fixed kwargs, a working lr, momentum if searched."""
    values = {
        "optimizer": spec.name,
        "target": spec.target,
        "learning_rate": learning_rate_for(spec),
        "momentum": MOMENTUM if "momentum" in spec.knobs else None,
        "hyperparameters": dict(spec.fixed),
        "schedule_free": spec.schedule_free,
    }
    values.update(overrides)
    return TrainingConfig(**values)


def minimise(config: TrainingConfig, steps: int = STEPS) -> tuple[float, float]:
    """Start and final loss of `steps` full-gradient steps on the quadratic from the origin."""
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = config.build_optimizer([p])
    start = float(quadratic(p.detach()))
    if config.schedule_free:
        optimizer.train()
    for _ in range(steps):
        optimizer.zero_grad()
        quadratic(p).backward()
        optimizer.step()
    if config.schedule_free:
        optimizer.eval()  # schedule-free evaluates at its averaged point
    return start, float(quadratic(p.detach()))


registry_specs = pytest.mark.parametrize("spec", list(REGISTRY.values()), ids=list(REGISTRY))


@registry_specs
def test_chosen_learning_rate_lies_in_the_default_range(spec: OptimizerSpec) -> None:
    low, high = spec.learning_rate.low, spec.learning_rate.high
    assert low <= learning_rate_for(spec) <= high
    if "momentum" in spec.knobs:
        assert spec.knobs["momentum"].low <= MOMENTUM <= spec.knobs["momentum"].high


@registry_specs
def test_registry_entry_minimises_an_ill_conditioned_quadratic(spec: OptimizerSpec) -> None:
    start, final = minimise(config_for(spec))
    assert math.isfinite(final)
    assert final <= start / REDUCTION, f"{spec.name}: loss {start:.3g} → {final:.3g}"


@registry_specs
def test_built_object_is_the_library_class_named_by_target(spec: OptimizerSpec) -> None:
    cls = import_target(spec.target)
    assert spec.optimizer_class() is cls
    assert issubclass(cls, torch.optim.Optimizer)
    p = torch.nn.Parameter(torch.zeros(2))
    optimizer = config_for(spec).build_optimizer([p])
    assert isinstance(optimizer, cls)
    assert optimizer.defaults["lr"] == pytest.approx(learning_rate_for(spec))
    for name, value in spec.fixed.items():
        assert optimizer.defaults[name] == value


@registry_specs
def test_weight_decay_off_means_no_weight_decay(spec: OptimizerSpec) -> None:
    """A config with weight_decay 0.0 ("off") must train without weight decay (AdamW's
    library default is 0.01)."""
    p = torch.nn.Parameter(torch.zeros(2))
    optimizer = config_for(spec, weight_decay=0.0).build_optimizer([p])
    assert optimizer.defaults.get("weight_decay", 0.0) == 0.0


# --- knob translation -------------------------------------------------------------------------


def test_betas_lr_and_eps_reach_the_library_as_its_own_kwargs() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    config = TrainingConfig(
        optimizer="adam",
        target="torch.optim:Adam",
        learning_rate=2e-3,
        hyperparameters={"beta1": 0.85, "beta2": 0.995, "eps": 1e-7},
    )
    optimizer = config.build_optimizer([p])
    assert optimizer.defaults["betas"] == (0.85, 0.995)
    assert optimizer.defaults["lr"] == 2e-3
    assert optimizer.defaults["eps"] == 1e-7
    kwargs = optimizer_kwargs(2e-3, 0.0, config.hyperparameters)
    assert "beta1" not in kwargs and "beta2" not in kwargs and "learning_rate" not in kwargs


def test_weight_decay_is_passed_when_non_zero() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    optimizer = TrainingConfig(
        optimizer="adam", target="torch.optim:Adam", learning_rate=1e-3, weight_decay=0.05
    ).build_optimizer([p])
    assert optimizer.defaults["weight_decay"] == 0.05


def test_zero_weight_decay_is_not_passed_so_classes_without_it_still_build() -> None:
    """LBFGS takes no weight_decay: a config with decay off must still build it."""
    assert "weight_decay" not in optimizer_kwargs(0.5, 0.0, {})
    p = torch.nn.Parameter(torch.zeros(2))
    optimizer = TrainingConfig(
        optimizer="lbfgs", target="torch.optim:LBFGS", learning_rate=0.5
    ).build_optimizer([p])
    assert isinstance(optimizer, torch.optim.LBFGS)
    with pytest.raises(TypeError, match="weight_decay"):
        TrainingConfig(
            optimizer="lbfgs", target="torch.optim:LBFGS", learning_rate=0.5, weight_decay=0.1
        ).build_optimizer([p])


@pytest.mark.parametrize(
    ("momentum", "nesterov", "expected"), [(0.9, False, 0.9), (0.95, True, 0.95), (None, False, 0)]
)
def test_momentum_is_passed_through(momentum, nesterov, expected) -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    optimizer = TrainingConfig(
        optimizer="nesterov" if nesterov else "momentum",
        target="torch.optim:SGD",
        learning_rate=0.01,
        momentum=momentum,
        hyperparameters={"nesterov": True} if nesterov else {},
    ).build_optimizer([p])
    assert optimizer.defaults["momentum"] == expected
    assert optimizer.defaults["nesterov"] is nesterov


def test_build_optimizer_does_not_mutate_the_configs_hyperparameters() -> None:
    hyperparameters = {"nesterov": True}
    config = TrainingConfig(
        optimizer="nesterov",
        target="torch.optim:SGD",
        learning_rate=0.01,
        momentum=0.9,
        hyperparameters=hyperparameters,
    )
    config.build_optimizer([torch.nn.Parameter(torch.zeros(2))])
    assert hyperparameters == {"nesterov": True}


# --- Lookahead ---------------------------------------------------------------------------------


def test_lookahead_wraps_the_optimizer_and_converges() -> None:
    spec = REGISTRY["adam"]
    config = config_for(spec, lookahead=(5, 0.5))
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = config.build_optimizer([p])
    assert isinstance(optimizer, Lookahead)
    assert isinstance(optimizer.optimizer, torch.optim.Adam)
    assert (optimizer.k, optimizer.alpha) == (5, 0.5)
    start, final = minimise(config)
    assert final <= start / REDUCTION


def test_lookahead_pulls_the_fast_weights_back_after_k_steps() -> None:
    """After k steps the weights sit at start + alpha·(fast − start), the Lookahead update."""
    k, alpha = 5, 0.5

    def five_sgd_steps(lookahead):
        p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        optimizer = build_optimizer("torch.optim:SGD", [p], 0.01, 0.0, {}, lookahead)
        for _ in range(k):
            optimizer.zero_grad()
            quadratic(p).backward()
            optimizer.step()
        return p.detach().clone()

    fast = five_sgd_steps(None)
    slow = five_sgd_steps((k, alpha))
    assert not torch.allclose(fast, torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(slow, alpha * fast)


# --- custom classes and import errors ---------------------------------------------------------


def test_a_custom_class_builds_by_its_target() -> None:
    config = TrainingConfig(optimizer="asgd", target="torch.optim:ASGD", learning_rate=0.01)
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = config.build_optimizer([p])
    assert type(optimizer) is torch.optim.ASGD
    assert optimizer.defaults["lr"] == 0.01
    start, final = minimise(config)
    assert final <= start / REDUCTION


@pytest.mark.parametrize("target", ["no_colon", "torch.optim:Nope", "nomodule_xyz:X", ":SGD"])
def test_import_target_errors_name_the_target(target: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(target))):
        import_target(target)


def test_import_target_returns_the_attribute() -> None:
    assert import_target("torch.optim:SGD") is torch.optim.SGD
    assert import_target("pytorch_optimizer:Lookahead") is Lookahead


# --- knob scales -------------------------------------------------------------------------------


def _registry_knobs() -> list[tuple[str, str, Knob]]:
    rows = []
    for spec in REGISTRY.values():
        rows.append((spec.name, "learning_rate", spec.learning_rate))
        rows.append((spec.name, "weight_decay", spec.weight_decay))
        rows.extend((spec.name, name, value) for name, value in spec.knobs.items())
    return rows


@pytest.mark.parametrize(
    ("optimizer", "name", "knob"),
    _registry_knobs(),
    ids=[f"{optimizer}-{name}" for optimizer, name, _ in _registry_knobs()],
)
def test_registry_knobs_keep_the_shared_scale_and_a_valid_range(optimizer, name, knob) -> None:
    """Optuna refuses a parameter whose scale changes within a study, so every entry must
    search a knob on the scale KNOB_SCALES gives its name."""
    assert name in KNOB_SCALES, f"{optimizer}: knob {name!r} has no shared scale"
    assert knob.scale == KNOB_SCALES[name]
    assert knob.low <= knob.high
    if knob.scale == "log":
        assert knob.low > 0
    if knob.scale == "log_complement":
        # 1 − value is sampled log-uniformly: it must be positive over the whole range.
        assert 0 <= knob.low <= knob.high < 1


@registry_specs
def test_fixed_kwargs_are_not_also_searched(spec: OptimizerSpec) -> None:
    assert not set(spec.fixed) & set(spec.knobs)
    assert spec.name and ":" in spec.target
