"""Optimizer updates for K trials at once: each parameter is one tensor holding every trial's
copy (leading dimension K), and each hyperparameter is a tensor of K values.

Written by hand because no library does this: torch.optim and pytorch-optimizer take one
learning rate, β and ε per parameter group, and their foreach and fused kernels batch over a
model's parameters, not over trials with different hyperparameters. K parameter groups would
cost K kernel launches per operation: the launch-bound regime batching exists to leave. Each
rule below mirrors its library's single-tensor update operation by operation, with the same
float64 scalars (equal to rounding: a fused ``addcdiv`` becomes a product and a quotient), and
tests/search/test_vectorized_optimizers.py checks every rule step by step against the library class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from tuner.config import TrainingConfig
from tuner.search.optimizers import import_target, library_defaults, optimizer_kwargs

Tensor = torch.Tensor
#: One rule's update of every parameter: (params, grads, states, hyperparameters, step, flags).
Update = Callable[
    [list[Tensor], list[Tensor], list[dict[str, Tensor]], "SlotValues", Tensor, "Flags"], None
]
SlotValues = Mapping[str, Tensor]
Flags = Mapping[str, Any]

#: Library kwargs that choose an implementation, not the mathematics; any value is accepted.
_IMPLEMENTATION_KWARGS = frozenset({"foreach", "fused", "differentiable", "capturable"})


@dataclass(frozen=True)
class VectorizedRule:
    """How one library optimizer's update runs over K stacked trials.

    Attributes:
        target: the library class it reproduces, ``module:Class``.
        hyperparameters: kwargs that may differ per trial (a tensor of K values each).
        flags: kwargs that must be equal within a group (they change the code path).
        state: per-parameter state tensors, each shaped like the stacked parameter.
        update: the update; see the rule functions below.
        initial_state: the hyperparameter each state tensor starts at (0 unless named here).
        fixed_flags: flags the library class sets without a kwarg (AdamW's decoupled decay).
        derived_flags: flags computed from the hyperparameters where the library branches on
            a value (RMSprop on momentum > 0), so each group follows its library's branch.
        state_flags: the flag a state tensor is kept under (RMSprop's grad_avg only when
            centered), so a group allocates no state its branch never reads.
    """

    target: str
    hyperparameters: tuple[str, ...]
    flags: tuple[str, ...]
    state: tuple[str, ...]
    update: Update
    initial_state: Mapping[str, str] = field(default_factory=dict)
    fixed_flags: Mapping[str, Any] = field(default_factory=dict)
    derived_flags: Mapping[str, Callable[[Mapping[str, float]], Any]] = field(default_factory=dict)
    state_flags: Mapping[str, str] = field(default_factory=dict)

    def state_under(self, flags: Flags) -> tuple[str, ...]:
        """The state tensors a group with these flags reads."""
        return tuple(
            name
            for name in self.state
            if name not in self.state_flags or flags[self.state_flags[name]]
        )


def per_slot(values: Tensor, like: Tensor) -> Tensor:
    """K values shaped to broadcast against a stacked tensor of shape (K, ...)."""
    return values.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def _sgd(params, grads, states, h, step, flags) -> None:
    if not flags["uses_momentum"]:
        _plain_sgd(params, grads, h)
        return
    lr, momentum, dampening, decay = h["lr"], h["momentum"], h["dampening"], h["weight_decay"]
    first = step == 1
    for param, grad, state in zip(params, grads, states, strict=True):
        grad = grad + per_slot(decay, param) * param
        buffer = state["momentum_buffer"]
        # torch starts the buffer as a copy of the first gradient, then decays it.
        buffer.copy_(
            torch.where(
                per_slot(first, param).bool(),
                grad,
                buffer * per_slot(momentum, param) + per_slot(1 - dampening, param) * grad,
            )
        )
        grad = grad + per_slot(momentum, param) * buffer if flags["nesterov"] else buffer
        param.sub_(per_slot(lr, param) * grad)


def _plain_sgd(params, grads, h) -> None:
    """SGD with momentum 0: torch keeps no buffer, so dampening does not apply."""
    for param, grad in zip(params, grads, strict=True):
        grad = grad + per_slot(h["weight_decay"], param) * param
        param.sub_(per_slot(h["lr"], param) * grad)


def _rmsprop(params, grads, states, h, step, flags) -> None:
    alpha, decay = h["alpha"], h["weight_decay"]
    for param, grad, state in zip(params, grads, states, strict=True):
        grad = grad + per_slot(decay, param) * param
        square_avg = state["square_avg"]
        square_avg.mul_(per_slot(alpha, param)).add_(per_slot(1 - alpha, param) * grad * grad)
        if flags["centered"]:
            grad_avg = state["grad_avg"]
            grad_avg.lerp_(grad, per_slot(1 - alpha, param))
            average = (square_avg - grad_avg * grad_avg).sqrt_()
        else:
            average = square_avg.sqrt()
        average.add_(per_slot(h["eps"], param))
        if flags["uses_momentum"]:
            buffer = state["momentum_buffer"]
            buffer.mul_(per_slot(h["momentum"], param)).add_(grad / average)
            param.sub_(per_slot(h["lr"], param) * buffer)
        else:
            param.add_(per_slot(-h["lr"], param) * grad / average)


def _adagrad(params, grads, states, h, step, flags) -> None:
    decayed_lr = h["lr"] / (1 + (step - 1) * h["lr_decay"])
    for param, grad, state in zip(params, grads, states, strict=True):
        grad = grad + per_slot(h["weight_decay"], param) * param
        total = state["sum"]
        total.add_(grad * grad)
        std = total.sqrt().add_(per_slot(h["eps"], param))
        param.add_(per_slot(-decayed_lr, param) * grad / std)


def _decay_weights(param: Tensor, grad: Tensor, h: SlotValues, decoupled: bool) -> Tensor:
    """Adam-family weight decay: shrink the weights (AdamW) or add it to the gradient (Adam)."""
    if decoupled:
        param.mul_(per_slot(1 - h["lr"] * h["weight_decay"], param))
        return grad
    return grad + per_slot(h["weight_decay"], param) * param


def _adam(params, grads, states, h, step, flags) -> None:
    beta1, beta2 = h["beta1"], h["beta2"]
    step_size = h["lr"] / (1 - beta1**step)
    correction2_sqrt = (1 - beta2**step).sqrt()
    for param, grad, state in zip(params, grads, states, strict=True):
        grad = _decay_weights(param, grad, h, flags["decoupled_weight_decay"])
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, per_slot(1 - beta1, param))
        exp_avg_sq.mul_(per_slot(beta2, param)).add_(per_slot(1 - beta2, param) * grad * grad)
        denominator = (exp_avg_sq.sqrt() / per_slot(correction2_sqrt, param)).add_(
            per_slot(h["eps"], param)
        )
        param.add_(per_slot(-step_size, param) * exp_avg / denominator)


def _nadam(params, grads, states, h, step, flags) -> None:
    beta1, beta2, decay = h["beta1"], h["beta2"], h["momentum_decay"]
    correction2 = 1 - beta2**step
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * decay))
    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * decay))
    # torch keeps the running product of μ as a float32 state: so does this rule.
    mu_product = h["mu_product"]
    mu_product.mul_(mu.to(mu_product.dtype))
    product = mu_product.double()
    grad_scale = -h["lr"] * (1.0 - mu) / (1.0 - product)
    average_scale = (-h["lr"] * mu_next) / (1.0 - product * mu_next)
    for param, grad, state in zip(params, grads, states, strict=True):
        grad = _decay_weights(param, grad, h, flags["decoupled_weight_decay"])
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, per_slot(1 - beta1, param))
        exp_avg_sq.mul_(per_slot(beta2, param)).add_(per_slot(1 - beta2, param) * grad * grad)
        denominator = (
            (exp_avg_sq / per_slot(correction2, param)).sqrt().add_(per_slot(h["eps"], param))
        )
        param.add_(per_slot(grad_scale, param) * grad / denominator)
        param.add_(per_slot(average_scale, param) * exp_avg / denominator)


def _lion(params, grads, states, h, step, flags) -> None:
    beta1, beta2, decay = h["beta1"], h["beta2"], h["weight_decay"]
    shrink = decay if flags["fixed_decay"] else decay * h["lr"]
    for param, grad, state in zip(params, grads, states, strict=True):
        if flags["weight_decouple"]:
            param.mul_(per_slot(1.0 - shrink, param))
        else:
            grad = grad + per_slot(decay, param) * param
        exp_avg = state["exp_avg"]
        update = exp_avg.lerp(grad, per_slot(1 - beta1, param)).sign_()
        exp_avg.lerp_(grad, per_slot(1 - beta2, param))
        param.sub_(per_slot(h["lr"], param) * update)


_ADAM_HYPERPARAMETERS = ("lr", "beta1", "beta2", "eps", "weight_decay")

RULES: dict[str, VectorizedRule] = {
    rule.target: rule
    for rule in [
        VectorizedRule(
            "torch.optim:SGD",
            ("lr", "momentum", "dampening", "weight_decay"),
            ("nesterov",),
            ("momentum_buffer",),
            _sgd,
            derived_flags={"uses_momentum": lambda values: values["momentum"] != 0},
            state_flags={"momentum_buffer": "uses_momentum"},
        ),
        VectorizedRule(
            "torch.optim:RMSprop",
            ("lr", "alpha", "eps", "weight_decay", "momentum"),
            ("centered",),
            ("square_avg", "grad_avg", "momentum_buffer"),
            _rmsprop,
            derived_flags={"uses_momentum": lambda values: values["momentum"] > 0},
            state_flags={"grad_avg": "centered", "momentum_buffer": "uses_momentum"},
        ),
        VectorizedRule(
            "torch.optim:Adagrad",
            ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"),
            (),
            ("sum",),
            _adagrad,
            initial_state={"sum": "initial_accumulator_value"},
        ),
        VectorizedRule(
            "torch.optim:Adam",
            _ADAM_HYPERPARAMETERS,
            ("decoupled_weight_decay",),
            ("exp_avg", "exp_avg_sq"),
            _adam,
        ),
        VectorizedRule(
            "torch.optim:AdamW",
            _ADAM_HYPERPARAMETERS,
            (),
            ("exp_avg", "exp_avg_sq"),
            _adam,
            fixed_flags={"decoupled_weight_decay": True},
        ),
        VectorizedRule(
            "torch.optim:NAdam",
            (*_ADAM_HYPERPARAMETERS, "momentum_decay"),
            ("decoupled_weight_decay",),
            ("exp_avg", "exp_avg_sq"),
            _nadam,
        ),
        VectorizedRule(
            "pytorch_optimizer:Lion",
            ("lr", "beta1", "beta2", "weight_decay"),
            ("weight_decouple", "fixed_decay"),
            ("exp_avg",),
            _lion,
        ),
    ]
}

#: Per-trial values a rule keeps besides its hyperparameters (NAdam's running product of μ).
SLOT_STATE: dict[str, dict[str, float]] = {"torch.optim:NAdam": {"mu_product": 1.0}}


@dataclass(frozen=True)
class VectorizedSettings:
    """One trial's optimizer in the form a rule takes: its hyperparameter values and flags."""

    rule: VectorizedRule
    values: dict[str, float]
    flags: tuple[tuple[str, Any], ...]


def vectorized_settings(config: TrainingConfig) -> VectorizedSettings | None:
    """The trial's optimizer as a vectorized rule takes it, or None where no rule reproduces it
    (another class, Lookahead, or a kwarg the rule does not implement at a non-default value)."""
    rule = RULES.get(config.target)
    if rule is None or config.lookahead is not None or config.schedule_free:
        return None
    optimizer_class = import_target(config.target)
    defaults = library_defaults(optimizer_class)
    given = optimizer_kwargs(config.learning_rate, config.weight_decay, config.knobs, defaults)
    try:  # the library's own checks (Nesterov needs momentum, β in [0, 1), ...)
        optimizer_class([torch.zeros(1, requires_grad=True)], **given)
    except (ValueError, TypeError):
        return None  # trained alone, the trial fails with the library's message
    kwargs = {**defaults, **given}
    # A rule takes one tensor per value, so the β pair is unpacked into its two knobs.
    if "betas" in kwargs:
        kwargs["beta1"], kwargs["beta2"] = kwargs.pop("betas")
    values, flags = {}, dict(rule.fixed_flags)
    for key, value in kwargs.items():
        if key in rule.hyperparameters:
            values[key] = float(value)
        elif key in rule.flags:
            flags[key] = value
        elif key in _IMPLEMENTATION_KWARGS:
            continue
        elif key not in defaults or value != defaults[key]:
            return None  # maximize, amsgrad, gradient centralisation, ...: not implemented
    for name, derive in rule.derived_flags.items():
        flags[name] = derive(values)
    return VectorizedSettings(rule, values, tuple(sorted(flags.items())))


class VectorizedOptimizer:
    """A rule's state for stacked trials (one row per trial), grown as trials join and
    narrowed as they leave, so no compute is spent on empty rows."""

    def __init__(self, rule: VectorizedRule, flags: Flags, params: list[Tensor]):
        """`params` are the stacked parameters, here only for their shapes (any row count)."""
        self.rule, self.flags = rule, dict(flags)
        float64 = {"dtype": torch.float64, "device": params[0].device}
        self.states = [
            {name: param.new_empty((0, *param.shape[1:])) for name in rule.state_under(flags)}
            for param in params
        ]
        self.values = {name: torch.empty(0, **float64) for name in rule.hyperparameters}
        self.slot_state = {
            name: torch.empty(0, dtype=torch.float32, device=params[0].device)
            for name in SLOT_STATE.get(rule.target, {})
        }
        self.steps = torch.empty(0, **float64)

    def append(self, settings: VectorizedSettings) -> None:
        """Add a row for one more trial, its state as the library would start it."""

        def grow(tensor: Tensor, value: float) -> Tensor:
            return torch.cat([tensor, tensor.new_full((1, *tensor.shape[1:]), value)])

        for name in self.values:
            self.values[name] = grow(self.values[name], settings.values[name])
        for state in self.states:
            for name in state:
                start = self.rule.initial_state.get(name)
                state[name] = grow(state[name], settings.values[start] if start else 0.0)
        for name, start in SLOT_STATE.get(self.rule.target, {}).items():
            self.slot_state[name] = grow(self.slot_state[name], start)
        self.steps = grow(self.steps, 0.0)

    def keep(self, rows: Tensor) -> None:
        """Keep only these rows, in this order (trials that left are dropped)."""
        for mapping in (self.values, self.slot_state, *self.states):
            for name, tensor in mapping.items():
                mapping[name] = tensor.index_select(0, rows)
        self.steps = self.steps.index_select(0, rows)

    def row_state(self, index: int) -> list[dict[str, Tensor]]:
        """One trial's state (copied), for its checkpoint."""
        mappings = (self.values, self.slot_state, *self.states, {"steps": self.steps})
        return [{name: tensor[index].clone() for name, tensor in m.items()} for m in mappings]

    def load_row(self, index: int, state: list[dict[str, Tensor]]) -> None:
        """Give one trial's row the state `row_state` saved."""
        mappings = (self.values, self.slot_state, *self.states, {"steps": self.steps})
        if len(state) != len(mappings):
            raise ValueError("the checkpoint holds another optimizer's state")
        for mapping, saved in zip(mappings, state, strict=True):
            for name, tensor in mapping.items():
                tensor[index] = saved[name]

    @torch.no_grad()
    def step(self, params: list[Tensor], grads: list[Tensor], lr: Tensor) -> None:
        """One update of every row; `lr` holds each trial's scheduled learning rate now."""
        self.steps += 1
        values = {**self.values, **self.slot_state, "lr": lr}
        self.rule.update(params, grads, self.states, values, self.steps, self.flags)
