"""The define-by-run search space: which parameters a trial gets, their ranges, the config.

Specs are built from dicts shaped like parsed TOML (see studies/quickstart.toml); trials are
Optuna's FixedTrial or real in-memory studies with a seeded RandomSampler.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FixedTrial, FrozenTrial

from tests.specs import build_spec
from tuner.config import TrainingConfig
from tuner.search.optimizers import REGISTRY, Knob, OptimizerSpec
from tuner.search.space import (
    LOOKAHEAD_ALPHA,
    LOOKAHEAD_K,
    at_position,
    params_for,
    position,
    ranges_differ,
    sample_config,
)
from tuner.spec import StudySpec


def make_spec(
    optimizers: list[str],
    workload: str = "rosenbrock",
    tables: dict[str, dict[str, Any]] | None = None,
    **search: Any,
) -> StudySpec:
    options = {"steps_per_epoch": 10} if workload == "rosenbrock" else {"samples": 100}
    return build_spec(
        name="space-test",
        workload={"name": workload, "options": options},
        search={"optimizers": optimizers, **search},
        optimizers=tables or {},
        budget={"trials": 10, "epochs": 2},
    )


def sample_study(spec: StudySpec, trials: int, seed: int = 0, enqueue=()) -> list[FrozenTrial]:
    """Sample `trials` configs in a real in-memory study; each records its config as a dict."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for params in enqueue:
        study.enqueue_trial(params)
    for _ in range(trials):
        trial = study.ask()
        config = sample_config(trial, spec)
        trial.set_user_attr("config", config.to_dict())
        study.tell(trial, 0.0)
    return study.trials


def choices(spec: StudySpec) -> dict[str, OptimizerSpec]:
    return {choice.name: choice for choice in spec.optimizer_choices()}


def in_knob(value: float, knob: Knob) -> bool:
    return knob.low * (1 - 1e-12) <= value <= knob.high * (1 + 1e-12)


def parameter() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.zeros(2))


def config_of(trial: FrozenTrial) -> TrainingConfig:
    return TrainingConfig.from_dict(trial.user_attrs["config"])


# --- single trials -----------------------------------------------------------------------------


def lr_at(optimizer: str, learning_rate: float) -> float:
    """The sampled position of a learning rate in a registry optimizer's default range."""
    return position(REGISTRY[optimizer].learning_rate, learning_rate)


def test_momentum_is_one_minus_the_sampled_complement_and_has_no_betas() -> None:
    spec = make_spec(["sgd", "momentum", "adam"], weight_decay="off")
    trial = FixedTrial(
        {
            "optimizer": "momentum",
            "learning_rate_in_range": lr_at("momentum", 0.02),
            "one_minus_momentum": 0.05,
        }
    )
    config = sample_config(trial, spec)
    assert config.optimizer == "momentum"
    assert config.target == "torch.optim:SGD"
    assert config.learning_rate == pytest.approx(0.02, rel=1e-12)
    assert config.momentum == pytest.approx(0.95)
    assert config.hyperparameters == {}
    assert set(trial.params) == {"optimizer", "learning_rate_in_range", "one_minus_momentum"}
    distribution = trial.distributions["one_minus_momentum"]
    knob = REGISTRY["momentum"].knobs["momentum"]
    assert distribution.log
    assert (distribution.low, distribution.high) == pytest.approx((1 - knob.high, 1 - knob.low))


def test_adam_gets_betas_and_eps_and_no_momentum() -> None:
    spec = make_spec(["sgd", "momentum", "adam"], weight_decay="off")
    trial = FixedTrial(
        {
            "optimizer": "adam",
            "learning_rate_in_range": lr_at("adam", 1e-3),
            "one_minus_beta1": 0.05,
            "one_minus_beta2": 0.002,
            "eps": 1e-8,
        }
    )
    config = sample_config(trial, spec)
    assert config.learning_rate == pytest.approx(1e-3, rel=1e-12)
    assert config.momentum is None
    assert set(config.hyperparameters) == {"beta1", "beta2", "eps"}
    assert config.hyperparameters["beta1"] == pytest.approx(0.95)
    assert config.hyperparameters["beta2"] == pytest.approx(0.998)
    assert config.hyperparameters["eps"] == 1e-8
    assert not any("momentum" in name for name in trial.params)


def test_sgd_suggests_no_momentum() -> None:
    spec = make_spec(["sgd", "momentum", "adam"], weight_decay="off")
    trial = FixedTrial({"optimizer": "sgd", "learning_rate_in_range": lr_at("sgd", 0.1)})
    config = sample_config(trial, spec)  # FixedTrial raises on any parameter not given
    assert set(trial.params) == {"optimizer", "learning_rate_in_range"}
    assert config.momentum is None
    assert config.hyperparameters == {}
    assert (config.weight_decay, config.schedule, config.max_grad_norm) == (0.0, "constant", None)
    assert config.batch_size is None and config.lookahead is None


def test_nesterov_keeps_its_fixed_kwarg_and_samples_momentum() -> None:
    spec = make_spec(["nesterov"], weight_decay="off")
    trial = FixedTrial({"optimizer": "nesterov", "learning_rate": 0.01, "one_minus_momentum": 0.1})
    config = sample_config(trial, spec)
    assert config.hyperparameters == {"nesterov": True}
    assert config.momentum == pytest.approx(0.9)
    optimizer = config.build_optimizer([parameter()])
    assert optimizer.defaults["nesterov"] is True


# --- a whole study of conditional parameters ----------------------------------------------------


def test_random_study_suggests_exactly_the_conditional_parameters() -> None:
    spec = make_spec(
        ["sgd", "momentum", "adam", "schedulefree_adamw"],
        schedules=["constant", "warmup_cosine"],
        warmup_fraction=[0.0, 0.2],
    )
    by_name = choices(spec)
    trials = sample_study(spec, 40)
    assert {t.params["optimizer"] for t in trials} == set(by_name)
    assert {config_of(t).schedule for t in trials} == {"constant", "warmup_cosine"}

    for trial in trials:
        params, config = trial.params, config_of(trial)
        name = params["optimizer"]
        choice = by_name[name]
        assert config.optimizer == name and config.target == choice.target

        # The optimizers' learning-rate ranges differ: one fixed distribution, the position.
        assert "learning_rate" not in params
        assert trial.distributions["learning_rate_in_range"] == FloatDistribution(0.0, 1.0)
        assert in_knob(config.learning_rate, choice.learning_rate)
        assert config.learning_rate == at_position(
            choice.learning_rate, params["learning_rate_in_range"]
        )

        assert ("one_minus_momentum" in params) == (name == "momentum")
        # Adam's β1 range (0.9-0.996) is not Schedule-Free's (0.8-0.95): β1 is in range.
        assert ("beta1_in_range" in params) == (name in ("adam", "schedulefree_adamw"))
        assert ("one_minus_beta2" in params) == (name == "adam")
        if name == "momentum":
            assert config.momentum == pytest.approx(1 - params["one_minus_momentum"])
            assert in_knob(config.momentum, choice.knobs["momentum"])
        else:
            assert config.momentum is None
        for knob_name, knob in choice.knobs.items():
            if knob_name != "momentum":
                assert in_knob(config.hyperparameters[knob_name], knob)
        if "beta1_in_range" in params:
            assert config.hyperparameters["beta1"] == at_position(
                choice.knobs["beta1"], params["beta1_in_range"]
            )

        assert "use_weight_decay" in params
        assert ("weight_decay_in_range" in params) == params["use_weight_decay"]
        if params["use_weight_decay"]:
            assert in_knob(config.weight_decay, choice.weight_decay)
        else:
            assert config.weight_decay == 0.0

        if name == "schedulefree_adamw":
            assert "schedule" not in params
            assert config.schedule == "constant"
            assert config.schedule_free
        else:
            assert params["schedule"] == config.schedule
            assert not config.schedule_free
        assert ("warmup_fraction" in params) == (config.schedule == "warmup_cosine")
        if config.schedule == "warmup_cosine":
            assert 0.0 <= config.warmup_fraction <= 0.2
        else:
            assert config.warmup_fraction == 0.0

        assert "batch_size" not in params and config.batch_size is None
        assert "clip_gradients" not in params and config.max_grad_norm is None
        assert "lookahead" not in params and config.lookahead is None

        # what a trial records rebuilds the same configuration, also through JSON storage
        rebuilt = TrainingConfig.from_dict(json.loads(json.dumps(trial.user_attrs["config"])))
        assert rebuilt == config
        assert rebuilt.to_dict() == trial.user_attrs["config"]


def test_every_registry_optimizer_shares_one_study() -> None:
    """Optuna refuses a parameter whose distribution kind changes within a study: sampling
    all registry entries (each at least once) with every toggle searched must not raise."""
    spec = make_spec(
        list(REGISTRY),
        schedules=["constant", "cosine", "warmup_cosine"],
        weight_decay="search",
        grad_clipping="search",
        lookahead="search",
    )
    trials = sample_study(spec, 48, enqueue=[{"optimizer": name} for name in REGISTRY])
    assert {t.params["optimizer"] for t in trials} == set(REGISTRY)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for trial in trials:
        config = config_of(trial)
        assert config.target == REGISTRY[config.optimizer].target
        assert config.schedule_free == REGISTRY[config.optimizer].schedule_free


# --- toggles -----------------------------------------------------------------------------------


def test_weight_decay_off_is_zero_and_not_a_parameter() -> None:
    spec = make_spec(["adamw"], weight_decay="off")
    trial = FixedTrial(
        {
            "optimizer": "adamw",
            "learning_rate": 1e-3,
            "one_minus_beta1": 0.05,
            "one_minus_beta2": 0.001,
            "eps": 1e-8,
        }
    )
    config = sample_config(trial, spec)
    assert config.weight_decay == 0.0
    assert "use_weight_decay" not in trial.params and "weight_decay" not in trial.params


def test_weight_decay_search_is_a_boolean_parameter() -> None:
    spec = make_spec(["adam", "adamw"], weight_decay="search")
    by_name = choices(spec)
    trials = sample_study(spec, 20)
    assert {t.params["use_weight_decay"] for t in trials} == {False, True}
    for trial in trials:
        config = config_of(trial)
        assert isinstance(trial.distributions["use_weight_decay"], CategoricalDistribution)
        if trial.params["use_weight_decay"]:
            choice = by_name[config.optimizer]
            assert config.weight_decay == at_position(
                choice.weight_decay, trial.params["weight_decay_in_range"]
            )
            assert in_knob(config.weight_decay, choice.weight_decay)
        else:
            assert "weight_decay_in_range" not in trial.params
            assert config.weight_decay == 0.0


def test_weight_decay_on_is_always_positive_within_range() -> None:
    spec = make_spec(["adam", "adamw", "lion"], weight_decay="on")
    by_name = choices(spec)
    for trial in sample_study(spec, 15):
        config = config_of(trial)
        assert "use_weight_decay" not in trial.params
        assert config.weight_decay > 0
        assert in_knob(config.weight_decay, by_name[config.optimizer].weight_decay)
        assert trial.distributions["weight_decay_in_range"] == FloatDistribution(0.0, 1.0)


def test_grad_clipping_search_samples_the_norm_range() -> None:
    spec = make_spec(["sgd"], weight_decay="off", grad_clipping="search", max_grad_norm=[0.5, 5.0])
    trials = sample_study(spec, 20)
    assert {t.params["clip_gradients"] for t in trials} == {False, True}
    for trial in trials:
        config = config_of(trial)
        if trial.params["clip_gradients"]:
            assert 0.5 <= config.max_grad_norm <= 5.0
            distribution = trial.distributions["max_grad_norm"]
            assert isinstance(distribution, FloatDistribution) and distribution.log
            assert (distribution.low, distribution.high) == (0.5, 5.0)
        else:
            assert config.max_grad_norm is None
            assert "max_grad_norm" not in trial.params


def test_a_single_value_is_a_constant_not_a_parameter() -> None:
    spec = make_spec(
        ["adam"],
        tables={"adam": {"learning_rate": 3e-3}},
        weight_decay="off",
        grad_clipping="on",
        max_grad_norm=2.0,
        schedules=["warmup_cosine"],
        warmup_fraction=0.1,
    )
    trial = FixedTrial(
        {"optimizer": "adam", "one_minus_beta1": 0.05, "one_minus_beta2": 0.001, "eps": 1e-8}
    )
    config = sample_config(trial, spec)  # FixedTrial raises on any parameter not given
    assert set(trial.params) == {"optimizer", "one_minus_beta1", "one_minus_beta2", "eps"}
    assert config.learning_rate == 3e-3
    assert config.max_grad_norm == 2.0
    assert config.schedule == "warmup_cosine"
    assert config.warmup_fraction == 0.1


@pytest.mark.parametrize(
    ("workload", "batch_sizes", "is_param", "expected"),
    [
        ("linear_regression", [16, 32, 64], True, 32),
        ("linear_regression", [64], False, 64),
        ("rosenbrock", [16, 32, 64], False, None),
    ],
)
def test_batch_size_is_searched_only_for_data_workloads(
    workload: str, batch_sizes: list[int], is_param: bool, expected: int | None
) -> None:
    spec = make_spec(["sgd"], workload=workload, weight_decay="off", batch_sizes=batch_sizes)
    values = {"optimizer": "sgd", "learning_rate": 0.01}
    if is_param:
        values["batch_size"] = expected
    trial = FixedTrial(values)
    config = sample_config(trial, spec)
    assert config.batch_size == expected
    assert ("batch_size" in trial.params) is is_param
    if is_param:
        assert trial.distributions["batch_size"] == CategoricalDistribution(batch_sizes)


def test_batch_size_is_sampled_from_the_choices() -> None:
    spec = make_spec(["sgd"], workload="linear_regression", batch_sizes=[16, 32, 64])
    sizes = {config_of(t).batch_size for t in sample_study(spec, 20)}
    assert sizes == {16, 32, 64}


def test_lookahead_search_samples_k_and_alpha_when_chosen() -> None:
    spec = make_spec(["adam", "schedulefree_adamw"], weight_decay="off", lookahead="search")
    trials = sample_study(spec, 40)
    chosen = [t for t in trials if t.params.get("lookahead")]
    assert chosen and len(chosen) < len(trials)
    for trial in trials:
        config = config_of(trial)
        if config.optimizer == "schedulefree_adamw":
            assert "lookahead" not in trial.params
        if trial.params.get("lookahead"):
            k, alpha = config.lookahead
            assert isinstance(k, int) and isinstance(alpha, float)
            assert LOOKAHEAD_K.low <= k <= LOOKAHEAD_K.high
            assert (LOOKAHEAD_K.low, LOOKAHEAD_K.high) == (5, 10)
            assert LOOKAHEAD_ALPHA.low <= alpha <= LOOKAHEAD_ALPHA.high
            assert (LOOKAHEAD_ALPHA.low, LOOKAHEAD_ALPHA.high) == (0.5, 0.8)
            assert (trial.params["lookahead_k"], trial.params["lookahead_alpha"]) == (k, alpha)
            assert isinstance(trial.distributions["lookahead_k"], IntDistribution)
        else:
            assert config.lookahead is None
            assert "lookahead_k" not in trial.params and "lookahead_alpha" not in trial.params


# --- [optimizers.*] tables ---------------------------------------------------------------------


def test_a_fixed_knob_is_not_a_parameter() -> None:
    spec = make_spec(["adam"], tables={"adam": {"beta2": 0.999}}, weight_decay="off")
    trial = FixedTrial(
        {"optimizer": "adam", "learning_rate": 1e-3, "one_minus_beta1": 0.05, "eps": 1e-8}
    )
    config = sample_config(trial, spec)
    assert config.hyperparameters["beta2"] == 0.999
    assert "one_minus_beta2" not in trial.params
    assert config.build_optimizer([parameter()]).defaults["betas"] == (
        pytest.approx(0.95),
        0.999,
    )


def test_a_range_override_changes_the_sampled_range() -> None:
    spec = make_spec(
        ["adam"],
        tables={"adam": {"learning_rate": [1e-3, 2e-3], "beta1": [0.8, 0.9]}},
        weight_decay="off",
    )
    trials = sample_study(spec, 15)
    for trial in trials:
        config = config_of(trial)
        assert 1e-3 <= config.learning_rate <= 2e-3
        assert 0.8 - 1e-12 <= config.hyperparameters["beta1"] <= 0.9 + 1e-12
        lr = trial.distributions["learning_rate"]
        assert (lr.low, lr.high, lr.log) == (1e-3, 2e-3, True)
        beta1 = trial.distributions["one_minus_beta1"]
        assert (beta1.low, beta1.high) == pytest.approx((0.1, 0.2))
        # untouched knobs keep the registry's range
        beta2 = REGISTRY["adam"].knobs["beta2"]
        assert in_knob(config.hyperparameters["beta2"], beta2)


# --- one fixed distribution per name ------------------------------------------------------------


@pytest.mark.parametrize(
    "knob",
    [Knob(1e-4, 1e-1, "log"), Knob(0.5, 0.99, "log_complement"), Knob(0.0, 0.2, "linear")],
)
def test_a_position_maps_to_the_range_on_its_scale_and_back(knob: Knob) -> None:
    assert at_position(knob, 0.0) == pytest.approx(knob.low, rel=1e-12, abs=1e-15)
    assert at_position(knob, 1.0) == pytest.approx(knob.high, rel=1e-12)
    for where in (0.1, 0.5, 0.9):
        assert position(knob, at_position(knob, where)) == pytest.approx(where, rel=1e-12)
    # Even steps in position are even steps on the knob's scale: a ratio for log scales.
    if knob.scale == "log":
        assert at_position(knob, 0.5) == pytest.approx((knob.low * knob.high) ** 0.5)
    if knob.scale == "log_complement":
        assert 1 - at_position(knob, 0.5) == pytest.approx(
            ((1 - knob.low) * (1 - knob.high)) ** 0.5
        )


def test_only_knobs_whose_ranges_differ_are_sampled_in_range() -> None:
    # Momentum and Nesterov share every default range: natural units throughout.
    assert ranges_differ(make_spec(["momentum", "nesterov"])) == set()
    trial = sample_study(make_spec(["momentum", "nesterov"], weight_decay="on"), 1)[0]
    assert {"learning_rate", "one_minus_momentum", "weight_decay"} <= set(trial.params)
    # SGD's learning rate is 1e-3-1, Adam's 1e-4-1e-2; their eps/betas are Adam's alone.
    assert ranges_differ(make_spec(["sgd", "adam", "adamw"])) == {"learning_rate", "weight_decay"}


def test_every_trial_of_a_multi_optimizer_study_shares_its_continuous_distributions() -> None:
    """What CMA-ES and GP model is the intersection of the trials' distributions: with the
    learning rate in range, it holds the learning rate whatever optimizer each trial chose."""
    spec = make_spec(["sgd", "momentum", "rmsprop", "adamw"], weight_decay="on")
    trials = sample_study(spec, 20)
    space = optuna.search_space.intersection_search_space(trials)
    assert {"optimizer", "learning_rate_in_range", "weight_decay_in_range"} <= set(space)


def test_params_for_enqueues_natural_values_through_their_sampled_names() -> None:
    spec = make_spec(["sgd", "momentum", "adam"], weight_decay="off")
    values = {"optimizer": "momentum", "learning_rate": 0.02, "momentum": 0.9}
    params = params_for(spec, values)
    assert set(params) == {"optimizer", "learning_rate_in_range", "one_minus_momentum"}
    config = sample_config(FixedTrial(params), spec)
    assert config.learning_rate == pytest.approx(0.02, rel=1e-12)
    assert config.momentum == pytest.approx(0.9, rel=1e-12)
