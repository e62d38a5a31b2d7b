"""The search space, define-by-run: sample a `TrainingConfig` from an Optuna trial.

Conditional on the optimizer: momentum only where it exists, β's and ε for the Adam family,
warmup length only with a warmup schedule. Parameter names are shared across optimizers
(``learning_rate``, ``one_minus_beta1``) so importance can compare them across the whole study.

A shared name must mean one fixed distribution, or the space is dynamic and only TPE models
it: CMA-ES, GP and QMC model the parameters whose distribution every trial agrees on and
sample the rest independently at random. So where the study's optimizers give a knob
different ranges (SGD's learning rate 1e-3–1, Adam's 1e-4–1e-2), the knob is sampled as its
*position* in the trial's optimizer's range, ``learning_rate_in_range`` in [0, 1] on the
knob's own scale (0: the low end, 1: the high end), and mapped to the optimizer's range. The
position, not the value, is what transfers between optimizers: "near the top of the range
that is sensible for this optimizer". A knob whose range every optimizer shares keeps its
natural units. The configuration a trial trained with (``config``) is always in natural
units, and so are `best_config()` and ``tuner best``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import optuna

from tuner.config import TrainingConfig
from tuner.search.optimizers import Knob, knob
from tuner.search.params import suggest_param
from tuner.spec import StudySpec, bounds
from tuner.workloads import uses_batches

#: A knob sampled as ``1 - value`` (scale ``log_complement``) is stored under this prefix.
COMPLEMENT_PREFIX = "one_minus_"

#: Lookahead's two knobs (Zhang et al. 2019 use k in 5–10, alpha 0.5–0.8).
LOOKAHEAD_K = knob("lookahead_k", 5, 10)
LOOKAHEAD_ALPHA = knob("lookahead_alpha", 0.5, 0.8)
#: A knob sampled as its position in each optimizer's range (module docstring) is stored
#: under this suffix.
IN_RANGE = "_in_range"


def at_position(spec: Knob, position: float) -> float | int:
    """The knob's value at `position` in [0, 1] along its range, on its sampling scale."""
    if spec.scale == "log":
        return spec.low * (spec.high / spec.low) ** position
    if spec.scale == "log_complement":
        low, high = 1 - spec.high, 1 - spec.low  # the complement's range, ascending
        return 1 - high * (low / high) ** position
    value = spec.low + position * (spec.high - spec.low)
    return round(value) if spec.scale == "int" else value


def position(spec: Knob, value: float) -> float:
    """Where `value` lies in the knob's range, on its sampling scale (inverse of at_position)."""
    if spec.low == spec.high:
        return 0.0
    if spec.scale == "log":
        return math.log(value / spec.low) / math.log(spec.high / spec.low)
    if spec.scale == "log_complement":
        low, high = 1 - spec.high, 1 - spec.low
        return math.log((1 - value) / high) / math.log(low / high)
    return (value - spec.low) / (spec.high - spec.low)


def per_optimizer_knobs(spec: StudySpec) -> dict[str, dict[str, Knob]]:
    """Each searched optimizer's own knobs: learning rate, its other knobs, weight decay."""
    return {
        choice.name: {
            "learning_rate": choice.learning_rate,
            **choice.knobs,
            "weight_decay": choice.weight_decay,
        }
        for choice in spec.optimizer_choices()
    }


def ranges_differ(spec: StudySpec) -> set[str]:
    """The knobs that the study's optimizers give different ranges: sampled in range."""
    ranges: dict[str, set[Knob]] = {}
    for knobs in per_optimizer_knobs(spec).values():
        for name, knob_spec in knobs.items():
            ranges.setdefault(name, set()).add(knob_spec)
    return {name for name, seen in ranges.items() if len(seen) > 1}


def params_for(spec: StudySpec, values: Mapping[str, Any]) -> dict[str, Any]:
    """The Optuna parameters that make `sample_config` take these natural values, for
    `study.enqueue_trial`: ``{"optimizer": "sgd", "learning_rate": 0.1}`` becomes
    ``{"optimizer": "sgd", "learning_rate_in_range": ...}`` where SGD's range is not shared,
    ``{"momentum": 0.9}`` becomes ``{"one_minus_momentum": 0.1}``. Other names pass as given."""
    in_range = ranges_differ(spec)
    knobs = per_optimizer_knobs(spec).get(values.get("optimizer"), {})
    params: dict[str, Any] = {}
    for name, value in values.items():
        knob_spec = knobs.get(name)
        if knob_spec is None:
            params[name] = value
        elif name in in_range:
            params[f"{name}{IN_RANGE}"] = position(knob_spec, value)
        elif knob_spec.scale == "log_complement":
            params[f"{COMPLEMENT_PREFIX}{name}"] = 1 - value
        else:
            params[name] = value
    return params


def suggest(trial: optuna.Trial, name: str, spec: Knob, in_range: bool = False) -> float | int:
    """Sample one knob on its scale, or as its position in its range when `in_range`; a range
    of one value is a constant, not a parameter."""
    if spec.low == spec.high:
        return int(spec.low) if spec.scale == "int" else spec.low
    if in_range:
        return at_position(spec, trial.suggest_float(f"{name}{IN_RANGE}", 0.0, 1.0))
    if spec.scale == "int":
        return trial.suggest_int(name, int(spec.low), int(spec.high))
    if spec.scale == "log_complement":
        complement = trial.suggest_float(
            f"{COMPLEMENT_PREFIX}{name}", 1 - spec.high, 1 - spec.low, log=True
        )
        return 1 - complement
    return trial.suggest_float(name, spec.low, spec.high, log=spec.scale == "log")


def knob_name(parameter: str) -> str:
    """The name users know for a stored parameter: ``one_minus_momentum`` → ``momentum``,
    ``learning_rate_in_range`` → ``learning_rate``.

    Every view that shows a parameter (report figures and tables, the study note) labels it
    with this name; how it was sampled is said once, by `sampled_scales`.
    """
    return parameter.removeprefix(COMPLEMENT_PREFIX).removesuffix(IN_RANGE)


def sampled_scales(parameters: Iterable[str]) -> str | None:
    """How the parameters stored on a transformed scale were sampled, in one sentence (said
    once per view, beside the names users know); None when none of them is."""
    said = []
    complements = sorted({knob_name(p) for p in parameters if p.startswith(COMPLEMENT_PREFIX)})
    if complements:
        said.append(
            f"{', '.join(complements)} {'is' if len(complements) == 1 else 'are'} sampled as "
            f"`{COMPLEMENT_PREFIX}<name>` = 1 − <name>, log-uniformly"
        )
    positions = sorted({knob_name(p) for p in parameters if p.endswith(IN_RANGE)})
    if positions:
        said.append(
            f"{', '.join(positions)} {'is' if len(positions) == 1 else 'are'} sampled as "
            f"`<name>{IN_RANGE}`, the position (0-1) in each optimizer's own range, on the "
            "knob's scale"
        )
    return "; ".join(said) or None


def _range(value: float | tuple[float, float], name: str) -> Knob:
    return knob(name, *bounds(value))


def _toggle(trial: optuna.Trial, name: str, mode: str) -> bool:
    if mode == "search":
        return trial.suggest_categorical(name, [False, True])
    return mode == "on"


def sample_config(trial: optuna.Trial, spec: StudySpec) -> TrainingConfig:
    """Sample one trial's configuration from the study's search space: the optimizer's
    knobs, then the user's declared ``[params]`` (define-by-run ones come later, as the
    user's code asks for them: tuner.execution.trial)."""
    search = spec.search
    choices = {choice.name: choice for choice in spec.optimizer_choices()}
    choice = choices[trial.suggest_categorical("optimizer", list(choices))]
    in_range = ranges_differ(spec)

    learning_rate = suggest(
        trial, "learning_rate", choice.learning_rate, "learning_rate" in in_range
    )
    hyperparameters = dict(choice.fixed)
    for name, knob_spec in choice.knobs.items():
        hyperparameters[name] = suggest(trial, name, knob_spec, name in in_range)
    momentum = hyperparameters.pop("momentum", None)

    weight_decay = 0.0
    if _toggle(trial, "use_weight_decay", search.weight_decay):
        weight_decay = suggest(
            trial, "weight_decay", choice.weight_decay, "weight_decay" in in_range
        )

    # Schedule-Free AdamW replaces the schedule: it keeps a constant LR of its own.
    schedule = "constant"
    if not choice.schedule_free:
        schedule = search.schedules[0]
        if len(search.schedules) > 1:
            schedule = trial.suggest_categorical("schedule", search.schedules)
    warmup_fraction = 0.0
    if schedule == "warmup_cosine":
        warmup_fraction = suggest(
            trial, "warmup_fraction", _range(search.warmup_fraction, "warmup_fraction")
        )

    max_grad_norm = None
    if _toggle(trial, "clip_gradients", search.grad_clipping):
        max_grad_norm = suggest(
            trial, "max_grad_norm", _range(search.max_grad_norm, "max_grad_norm")
        )

    batch_size = None
    if uses_batches(spec.workload):
        batch_size = search.batch_sizes[0]
        if len(search.batch_sizes) > 1:
            batch_size = trial.suggest_categorical("batch_size", search.batch_sizes)

    lookahead = None
    if not choice.schedule_free and _toggle(trial, "lookahead", search.lookahead):
        lookahead = (
            int(suggest(trial, "lookahead_k", LOOKAHEAD_K)),
            float(suggest(trial, "lookahead_alpha", LOOKAHEAD_ALPHA)),
        )

    params = {name: suggest_param(trial, name, p) for name, p in spec.declared_params().items()}

    return TrainingConfig(
        optimizer=choice.name,
        target=choice.target,
        learning_rate=float(learning_rate),
        momentum=momentum,
        weight_decay=float(weight_decay),
        hyperparameters=hyperparameters,
        schedule=schedule,
        warmup_fraction=float(warmup_fraction),
        max_grad_norm=max_grad_norm,
        batch_size=batch_size,
        lookahead=lookahead,
        schedule_free=choice.schedule_free,
        params=params,
    )
