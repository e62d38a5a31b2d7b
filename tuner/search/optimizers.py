"""The optimizer registry: name → library class, default search ranges, and how knobs become kwargs.

Every optimizer comes from torch.optim or pytorch-optimizer; none is written here. An entry
says which hyperparameters ("knobs") are searched by default and over which range, with the
source of the prior. Knobs keep one sampling scale across all optimizers (learning_rate is
always log-uniform, momentum always on the 1−momentum log scale), because Optuna refuses a
parameter name whose scale changes within a study; ranges may differ per optimizer.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the registry is data: reading a study (tuner status) needs no torch
    import torch

Scale = Literal["log", "linear", "log_complement", "int"]


@dataclass(frozen=True)
class Knob:
    """How one hyperparameter is searched.

    ``log_complement`` samples ``1 - value`` log-uniformly, so momentum 0.9–0.99 and
    β close to 1 are not rare (ANCHORS: SGD momentum, AlgoPerf's 1−β1).
    """

    low: float
    high: float
    scale: Scale = "log"


#: The scale of each known knob, shared by every optimizer (see module docstring).
KNOB_SCALES: dict[str, Scale] = {
    "learning_rate": "log",
    "weight_decay": "log",
    "momentum": "log_complement",
    "beta1": "log_complement",
    "beta2": "log_complement",
    "alpha": "log_complement",
    "rho": "log_complement",
    "eps": "log",
    "final_lr": "log",
    "gamma": "log",
    "lookahead_k": "int",
    "lookahead_alpha": "linear",
    "max_grad_norm": "log",
    "warmup_fraction": "linear",
}


def knob(name: str, low: float, high: float) -> Knob:
    """A knob on the shared scale of its name (linear for names the table does not know)."""
    return Knob(low, high, KNOB_SCALES.get(name, "linear"))


@dataclass(frozen=True)
class OptimizerSpec:
    """One registry entry.

    Attributes:
        name: registry key used in study files and results.
        target: ``module:Class`` of the library optimizer.
        learning_rate: default learning-rate range.
        knobs: other hyperparameters searched by default (natural units).
        fixed: kwargs always passed (``nesterov=True`` for Nesterov).
        weight_decay: default range when weight decay is switched on.
        schedule_free: the optimizer schedules itself (Schedule-Free AdamW); it gets a
            constant LR schedule and needs ``optimizer.train()/eval()`` around evaluation.
        source: where the defaults come from.
    """

    name: str
    target: str
    learning_rate: Knob
    knobs: Mapping[str, Knob] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    weight_decay: Knob = field(default_factory=lambda: knob("weight_decay", 1e-6, 1e-2))
    schedule_free: bool = False
    source: str = ""

    def optimizer_class(self) -> type[torch.optim.Optimizer]:
        """Import the library class named by ``target``."""
        return import_target(self.target)


def import_target(target: str) -> Any:
    """Import ``package.module:attribute``; raise ValueError naming the target on failure."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{target!r} is not of the form 'package.module:name'")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import {target!r}: {error}") from error


def _lr(low: float, high: float) -> Knob:
    return knob("learning_rate", low, high)


# Adam-family β/ε priors: AlgoPerf NAdamW baseline searches 1−β1 in [4e-3, 0.1]; Choi et al.
# 2019 show tuning β2 and ε matters too, so they are searched in narrow bands around defaults.
_ADAM_KNOBS = {
    "beta1": knob("beta1", 0.9, 0.996),
    "beta2": knob("beta2", 0.99, 0.9999),
    "eps": knob("eps", 1e-10, 1e-6),
}
# Decoupled weight decay is multiplied by the learning rate, so it needs a larger range
# (AlgoPerf: [5e-3, 1]); Lion wants it 3–10× larger than AdamW (Chen et al. 2023).
_DECOUPLED_WD = knob("weight_decay", 5e-3, 1.0)
_MOMENTUM = {"momentum": knob("momentum", 0.5, 0.99)}

REGISTRY: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in [
        OptimizerSpec("sgd", "torch.optim:SGD", _lr(1e-3, 1.0), source="ANCHORS: SGD lr prior"),
        OptimizerSpec(
            "momentum",
            "torch.optim:SGD",
            _lr(1e-3, 1.0),
            _MOMENTUM,
            source="ANCHORS: 1−momentum log-uniform [1e-2, 0.5]",
        ),
        OptimizerSpec(
            "nesterov",
            "torch.optim:SGD",
            _lr(1e-3, 1.0),
            _MOMENTUM,
            {"nesterov": True},
            source="ANCHORS: 1−momentum log-uniform [1e-2, 0.5]",
        ),
        OptimizerSpec(
            "rmsprop",
            "torch.optim:RMSprop",
            _lr(1e-4, 1e-1),
            {"alpha": knob("alpha", 0.9, 0.999), "eps": knob("eps", 1e-10, 1e-6)},
            source="torch defaults alpha=0.99, eps=1e-8 at the centre of the ranges",
        ),
        OptimizerSpec("adagrad", "torch.optim:Adagrad", _lr(1e-3, 1.0), source="Duchi et al."),
        OptimizerSpec(
            "adadelta",
            "torch.optim:Adadelta",
            _lr(1e-2, 10.0),
            {"rho": knob("rho", 0.8, 0.99)},
            source="torch default lr=1.0, rho=0.9",
        ),
        OptimizerSpec(
            "adam",
            "torch.optim:Adam",
            _lr(1e-4, 1e-2),
            _ADAM_KNOBS,
            source="AlgoPerf lr prior; Choi et al. 2019",
        ),
        OptimizerSpec(
            "adamw",
            "torch.optim:AdamW",
            _lr(1e-4, 1e-2),
            _ADAM_KNOBS,
            weight_decay=_DECOUPLED_WD,
            source="AlgoPerf NAdamW baseline",
        ),
        OptimizerSpec(
            "nadam",
            "torch.optim:NAdam",
            _lr(1e-4, 1e-2),
            _ADAM_KNOBS,
            source="AlgoPerf NAdamW baseline",
        ),
        OptimizerSpec(
            "radam", "torch.optim:RAdam", _lr(1e-4, 1e-2), _ADAM_KNOBS, source="Liu et al. 2020"
        ),
        OptimizerSpec(
            "adamax",
            "torch.optim:Adamax",
            _lr(1e-4, 1e-1),
            _ADAM_KNOBS,
            source="Kingma & Ba 2015, default lr 2e-3",
        ),
        OptimizerSpec(
            "lion",
            "pytorch_optimizer:Lion",
            _lr(1e-5, 1e-3),
            {"beta1": knob("beta1", 0.85, 0.95), "beta2": knob("beta2", 0.98, 0.995)},
            weight_decay=knob("weight_decay", 1e-2, 3.0),
            source="Chen et al. 2023: lr 3–10× below AdamW's, weight decay 3–10× above",
        ),
        OptimizerSpec(
            "lamb",
            "pytorch_optimizer:Lamb",
            _lr(1e-4, 1e-1),
            _ADAM_KNOBS,
            weight_decay=_DECOUPLED_WD,
            source="You et al. 2020",
        ),
        OptimizerSpec(
            "adabelief",
            "pytorch_optimizer:AdaBelief",
            _lr(1e-4, 1e-2),
            {**_ADAM_KNOBS, "eps": knob("eps", 1e-16, 1e-8)},
            weight_decay=_DECOUPLED_WD,
            source="Zhuang et al. 2020: eps 1e-16",
        ),
        OptimizerSpec(
            "adabound",
            "pytorch_optimizer:AdaBound",
            _lr(1e-4, 1e-2),
            {**_ADAM_KNOBS, "final_lr": knob("final_lr", 1e-2, 1.0)},
            weight_decay=_DECOUPLED_WD,
            source="Luo et al. 2019: final_lr 0.1",
        ),
        OptimizerSpec(
            "schedulefree_adamw",
            "pytorch_optimizer:ScheduleFreeAdamW",
            _lr(1e-4, 1e-1),
            {"beta1": knob("beta1", 0.8, 0.95)},
            weight_decay=_DECOUPLED_WD,
            schedule_free=True,
            source="Defazio et al. 2024: lr larger than AdamW's, β1 0.9",
        ),
    ]
}


#: Our names for knobs the libraries spell differently (the β's travel as one tuple); every
#: other knob keeps the library's name. `optimizer_kwargs` applies it, the spec checks with it.
LIBRARY_NAMES = {"learning_rate": "lr", "beta1": "betas", "beta2": "betas"}


@functools.cache
def library_defaults(optimizer_class: type) -> dict[str, Any]:
    """The keyword defaults of a library optimizer's constructor (read once per class: callers
    must not change the dict)."""
    parameters = inspect.signature(optimizer_class.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def optimizer_kwargs(
    learning_rate: float,
    weight_decay: float,
    hyperparameters: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Translate knobs in natural units to library kwargs (beta1/beta2 → betas, lr): the one
    mapping from tuner's form to a library's, used to build, to stack and to check a spec.

    `defaults` are the class's own (see `library_defaults`): a β that is not given keeps the
    library's value, and weight decay is passed even at 0 wherever the class takes it, since
    some classes default to non-zero decay (AdamW: 0.01), which "off" must override.
    """
    defaults = defaults or {}
    kwargs = {key: value for key, value in hyperparameters.items() if key not in ("beta1", "beta2")}
    if "beta1" in hyperparameters or "beta2" in hyperparameters:
        default_betas = defaults.get("betas", (0.9, 0.999))
        kwargs["betas"] = (
            hyperparameters.get("beta1", default_betas[0]),
            hyperparameters.get("beta2", default_betas[1]),
        )
    kwargs["lr"] = learning_rate
    if weight_decay or "weight_decay" in defaults:
        kwargs["weight_decay"] = weight_decay
    return kwargs


def build_optimizer(
    target: str,
    params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
    learning_rate: float,
    weight_decay: float,
    hyperparameters: Mapping[str, Any],
    lookahead: tuple[int, float] | None = None,
) -> torch.optim.Optimizer:
    """Build a library optimizer, wrapped in pytorch-optimizer's Lookahead when asked."""
    optimizer_class = import_target(target)
    kwargs = optimizer_kwargs(
        learning_rate, weight_decay, hyperparameters, library_defaults(optimizer_class)
    )
    optimizer = optimizer_class(params, **kwargs)
    if lookahead is None:
        return optimizer
    from pytorch_optimizer import Lookahead

    k, alpha = lookahead
    return Lookahead(optimizer, k=k, alpha=alpha)
