"""The search space, define-by-run: sample a `TrainingConfig` from an Optuna trial.

Conditional on the optimizer: momentum only where it exists, β's and ε for the Adam family,
warmup length only with a warmup schedule. Parameter names are shared across optimizers
(``learning_rate``, ``one_minus_beta1``) so importance can compare them across the whole study.
"""

from __future__ import annotations

from collections.abc import Iterable

import optuna

from tuner.config import TrainingConfig
from tuner.optimizers import Knob, knob
from tuner.spec import StudySpec, bounds
from tuner.workloads import uses_batches

#: A knob sampled as ``1 - value`` (scale ``log_complement``) is stored under this prefix.
COMPLEMENT_PREFIX = "one_minus_"

#: Lookahead's two knobs (Zhang et al. 2019 use k in 5–10, alpha 0.5–0.8).
LOOKAHEAD_K = knob("lookahead_k", 5, 10)
LOOKAHEAD_ALPHA = knob("lookahead_alpha", 0.5, 0.8)


def suggest(trial: optuna.Trial, name: str, spec: Knob) -> float | int:
    """Sample one knob on its scale; a range of one value is a constant, not a parameter."""
    if spec.low == spec.high:
        return int(spec.low) if spec.scale == "int" else spec.low
    if spec.scale == "int":
        return trial.suggest_int(name, int(spec.low), int(spec.high))
    if spec.scale == "log_complement":
        complement = trial.suggest_float(
            f"{COMPLEMENT_PREFIX}{name}", 1 - spec.high, 1 - spec.low, log=True
        )
        return 1 - complement
    return trial.suggest_float(name, spec.low, spec.high, log=spec.scale == "log")


def knob_name(parameter: str) -> str:
    """The name users know for a stored parameter: ``one_minus_momentum`` → ``momentum``.

    Every view that shows a parameter (report figures and tables, the study note) labels it
    with this name; how it was sampled is said once, by `sampled_scales`.
    """
    return parameter.removeprefix(COMPLEMENT_PREFIX)


def sampled_scales(parameters: Iterable[str]) -> str | None:
    """How the parameters stored on a transformed scale were sampled, in one sentence (said
    once per view, beside the names users know); None when none of them is."""
    names = sorted({knob_name(p) for p in parameters if p.startswith(COMPLEMENT_PREFIX)})
    if not names:
        return None
    return (
        f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} sampled as "
        f"`{COMPLEMENT_PREFIX}<name>` = 1 − <name>, log-uniformly"
    )


def _range(value: float | tuple[float, float], name: str) -> Knob:
    return knob(name, *bounds(value))


def _toggle(trial: optuna.Trial, name: str, mode: str) -> bool:
    if mode == "search":
        return trial.suggest_categorical(name, [False, True])
    return mode == "on"


def sample_config(trial: optuna.Trial, spec: StudySpec) -> TrainingConfig:
    """Sample one trial's configuration from the study's search space."""
    search = spec.search
    choices = {choice.name: choice for choice in spec.optimizer_choices()}
    choice = choices[trial.suggest_categorical("optimizer", list(choices))]

    learning_rate = suggest(trial, "learning_rate", choice.learning_rate)
    hyperparameters = dict(choice.fixed)
    for name, knob_spec in choice.knobs.items():
        hyperparameters[name] = suggest(trial, name, knob_spec)
    momentum = hyperparameters.pop("momentum", None)

    weight_decay = 0.0
    if _toggle(trial, "use_weight_decay", search.weight_decay):
        weight_decay = suggest(trial, "weight_decay", choice.weight_decay)

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
    )
