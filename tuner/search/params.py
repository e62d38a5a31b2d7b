"""The user's own parameters: the model's dropout, width or depth searched beside the optimizer.

Declared in the study file's ``[params]`` table, in the forms of Optuna's ``suggest_*``::

    [params]
    dropout = { low = 0.0, high = 0.5 }          # a float range
    weight_scale = { low = 1e-3, high = 1.0, log = true }
    layers = { low = 1, high = 4 }                # integers (both bounds integers), optional step
    width = { choices = [64, 128, 256] }          # one of a list
    activation = "relu"                           # a fixed value

or asked while training, define-by-run, with ``trial.suggest_float/int/categorical``
(tuner.execution.trial). Either way each is an ordinary Optuna parameter under the very name
the user chose, so the samplers model it beside the optimizer's knobs and the dashboard and
the ``optuna`` CLI show it as it is; so a name must not be one of tuner's own (`reserved`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

#: Parameters tuner's own search space stores (tuner.search.space), besides optimizer knobs.
TUNER_PARAMETERS = frozenset(
    {
        "optimizer",
        "learning_rate",
        "weight_decay",
        "use_weight_decay",
        "schedule",
        "warmup_fraction",
        "clip_gradients",
        "max_grad_norm",
        "batch_size",
        "lookahead",
        "lookahead_k",
        "lookahead_alpha",
    }
)
#: The prefix and suffix tuner's space stores transformed knobs under (tuner.search.space).
TRANSFORMED = ("one_minus_", "_in_range")
#: The keys of a ``[params]`` range or choice table.
_TABLE_KEYS = frozenset({"low", "high", "log", "step", "choices"})


@dataclass(frozen=True)
class Param:
    """One declared parameter.

    Attributes:
        kind: ``float``, ``int``, ``categorical`` or ``fixed`` (not searched: always `value`).
        low, high: the range's bounds (ranges).
        log: sampled log-uniformly (ranges).
        step: the grid step of a range, or None for a continuous float range.
        choices: the values of a ``categorical``.
        value: a ``fixed`` parameter's value.
    """

    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None


def reserved(name: str, knobs: Iterable[str] = ()) -> str | None:
    """Why `name` cannot be a user's parameter (one of tuner's or an optimizer knob, `knobs`),
    or None when it can."""
    if name in TUNER_PARAMETERS or name in set(knobs):
        return "one of tuner's own search parameters (a knob or setting): choose another name"
    if name.startswith(TRANSFORMED[0]) or name.endswith(TRANSFORMED[1]):
        return (
            f"names starting {TRANSFORMED[0]!r} or ending {TRANSFORMED[1]!r} are tuner's own: "
            "choose another name"
        )
    return None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _category(value: Any) -> str:
    """The kind of a choice: choices of one list must share it (numbers mix ints and floats)."""
    return "number" if _number(value) else type(value).__name__


def parse_param(name: str, raw: Any) -> Param:
    """Read one ``[params]`` entry.

    Raises:
        ValueError: the entry is none of the accepted forms; the message says which it needs.
    """
    expected = (
        "expected { low, high } (with log = true or step), { choices = [...] }, or a fixed "
        "number, string or boolean"
    )
    if isinstance(raw, bool | str) or _number(raw):
        if isinstance(raw, float) and not math.isfinite(raw):
            raise ValueError(f"expected a finite number, got {raw}")
        return Param("fixed", value=raw)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{expected}, got {raw!r}")
    unknown = sorted(set(raw) - _TABLE_KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; {expected}")
    if "choices" in raw:
        return _choices(raw)
    if "low" not in raw or "high" not in raw:
        raise ValueError(f"{expected}, got {dict(raw)}")
    low, high, log, step = raw["low"], raw["high"], raw.get("log", False), raw.get("step")
    for key, bound in (("low", low), ("high", high), ("step", step)):
        if bound is not None and not (_number(bound) and math.isfinite(bound)):
            raise ValueError(f"{key}: expected a finite number, got {bound!r}")
    if not isinstance(log, bool):
        raise ValueError(f"log: expected true or false, got {log!r}")
    if low >= high:
        what = "is above" if low > high else "equals"
        raise ValueError(
            f"low {low:g} {what} high {high:g}: expected low < high (a single value is "
            "written as the value itself)"
        )
    if log and low <= 0:
        raise ValueError(f"log = true needs 0 < low, got [{low:g}, {high:g}]")
    if step is not None and (step <= 0 or log):
        raise ValueError("step: expected a positive number, and no step with log = true")
    integers = isinstance(low, int) and isinstance(high, int) and not isinstance(step, float)
    return Param("int" if integers else "float", low, high, log, step)


def _choices(raw: Mapping[str, Any]) -> Param:
    choices = raw["choices"]
    if set(raw) != {"choices"}:
        raise ValueError("choices: give choices alone, without low, high, log or step")
    if not isinstance(choices, list) or not choices:
        raise ValueError(f"choices: expected a non-empty list, got {choices!r}")
    kinds = {_category(choice) for choice in choices}
    if not kinds <= {"number", "str", "bool"}:
        raise ValueError(f"choices: expected numbers, strings or booleans, got {choices}")
    if len(kinds) > 1:
        raise ValueError(f"choices: expected values of one type, got {choices}")
    if any(isinstance(c, float) and not math.isfinite(c) for c in choices):
        raise ValueError(f"choices: expected finite numbers, got {choices}")
    if len(set(choices)) != len(choices):
        raise ValueError(f"choices: lists a choice twice: {choices}")
    return Param("categorical", choices=tuple(choices))


def suggest_param(trial: optuna.Trial, name: str, param: Param) -> Any:
    """Sample one declared parameter from `trial`, under the user's name."""
    if param.kind == "fixed":
        return param.value
    if param.kind == "categorical":
        return trial.suggest_categorical(name, list(param.choices))
    if param.kind == "int":
        step = int(param.step or 1)
        return trial.suggest_int(name, int(param.low), int(param.high), step=step, log=param.log)
    return trial.suggest_float(name, param.low, param.high, step=param.step, log=param.log)
