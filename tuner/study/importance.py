"""Parameter importance you can trust: PED-ANOVA and fANOVA side by side, over enough trials.

Two evaluators, because they answer different questions and users meet both:

- **PED-ANOVA** (what optuna-dashboard shows): which parameters set the top 10 % of trials
  apart from the rest. Computed here exactly as optuna-dashboard 0.21 computes it
  (``PedAnovaImportanceEvaluator()`` at its defaults over the COMPLETE trials, lower is better),
  and over the same trials as ``tuner dashboard`` (`search_results`: confirmation runs and
  warm-start copies left out, tuner.views.dashboard), so the report and the chart show the same
  numbers; plain optuna-dashboard counts those trials too. Optuna 5's
  PED-ANOVA is conditional: a parameter whose range differs per optimizer is scored within
  each range.
- **fANOVA**: the share of the metric's variance each parameter explains, over the trials
  that have it (see `_fanova_group` for why we build its input ourselves).

Neither is shown over fewer than `MIN_TRIALS` complete trials (`withheld` says why in its
place): PED-ANOVA contrasts the top 10 %, which below 20 trials is one or two trials, and on a
4-trial study it credited ``eps`` with 0.95 of the importance. Optuna's documentation prefers
at least five trials in that top set (50 trials); 20 is the least that compares a set.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from tuner.study.results import is_result, is_search_trial, trial_optimizer

#: The fewest complete trials over which an importance is shown (see the module docstring).
MIN_TRIALS = 20
#: A positive metric whose largest value is this many times its smallest spans decades: fANOVA
#: then explains log10(metric), where the raw values would let a few bad trials own the variance.
LOG_SPAN = 100.0


def withheld(complete: int, minimum: int = MIN_TRIALS) -> str | None:
    """Why no importance is shown over `complete` trials, or None when there are enough."""
    if complete >= minimum:
        return None
    return (
        f"{complete} complete trial{'' if complete == 1 else 's'}, and importance "
        f"needs at least {minimum} to mean anything (below that the top 10 % PED-ANOVA "
        "contrasts is one or two trials)"
    )


def spans_decades(values: Sequence[float]) -> bool:
    """Whether positive `values` span more than LOG_SPAN (then they are drawn and explained
    on a log scale)."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > LOG_SPAN


def finished(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The results (COMPLETE, finite, not diverged)."""
    return [trial for trial in trials if is_result(trial)]


def search_results(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials an importance is computed over: the search's own results. Confirmation runs
    repeat the top configurations and copies come from other studies: counted, they would
    credit whatever the winners share (tuner.study.results.is_search_trial)."""
    return [trial for trial in finished(trials) if is_search_trial(trial)]


@dataclass(frozen=True)
class ImportanceGroup:
    """fANOVA importances over one set of complete trials; they sum to 1 within the group.

    Attributes:
        scope: which trials, in words ("all 24 complete trials").
        trials: how many trials the evaluation saw.
        optimizers: the optimizer types of those trials, sorted.
        importances: parameter → share of the metric's variance, largest first.
    """

    scope: str
    trials: int
    optimizers: tuple[str, ...]
    importances: dict[str, float]


@dataclass(frozen=True)
class ParameterImportances:
    """Importances of a study's parameters by both evaluators, or why there are none.

    Attributes:
        ped_anova: PED-ANOVA over the search's complete trials, as optuna-dashboard computes it
            and ``tuner dashboard`` shows it (parameter → importance, largest first); empty
            when withheld.
        overall: fANOVA over the parameters every complete trial has (``optimizer``,
            ``learning_rate``, ``schedule``, ...) and all complete trials; None when it could
            not be evaluated or is withheld.
        conditional: each conditional parameter (``one_minus_momentum``, ``one_minus_beta1``,
            ...) → the fANOVA group evaluated over the trials that have it, which holds it
            together with the parameters those trials share.
        skipped: parameter → why fANOVA gives it no importance (too few trials, one value...).
        target: what fANOVA explained: the metric, or ``log10(metric)`` for a positive metric
            spanning decades (a landscape's loss).
        withheld: why no importance is shown at all (too few complete trials), else None.
        left_out: complete trials that are no part of the search (confirmation runs, copies
            of earlier studies' trials), left out here and by ``tuner dashboard``; plain
            optuna-dashboard counts them.
    """

    ped_anova: dict[str, float]
    overall: ImportanceGroup | None
    conditional: dict[str, ImportanceGroup]
    skipped: dict[str, str]
    target: str
    withheld: str | None = None
    left_out: int = 0


def ped_anova(complete: Sequence[FrozenTrial], direction: StudyDirection) -> dict[str, float]:
    """PED-ANOVA importances exactly as optuna-dashboard computes them (largest first).

    The trials are copied into a scratch in-memory study, so the numbers come from the same
    trials the rest of the report reads, with no second query of the database.
    """
    if len(complete) < 2:
        return {}
    sign = -1.0 if direction == StudyDirection.MAXIMIZE else 1.0
    with _quiet_optuna(), warnings.catch_warnings():
        # The dashboard silences the first; the second is conditional PED-ANOVA noting an
        # optimizer with a single trial, whose regime it leaves out (the result stays valid).
        warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
        warnings.filterwarnings("ignore", message="Some regimes for parameter")
        scratch = optuna.create_study(direction=direction)
        scratch.add_trials(list(complete))
        return dict(
            optuna.importance.get_param_importances(
                scratch,
                target=lambda trial: sign * trial.value,
                evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
            )
        )


def _widen(
    distributions: list[BaseDistribution],
) -> tuple[BaseDistribution, Callable[[Any], Any]] | None:
    """One distribution covering all of `distributions` (the union of their ranges), and how a
    value maps onto it; None when they cannot share one (a scale or type that changes).

    Log-scaled floats become their log10 on a linear range, so fANOVA integrates the marginal
    variance uniformly over the space as it was sampled (Optuna's evaluator does not transform
    log parameters: on [1e-5, 1e-1] nearly all the volume would sit above 1e-2).
    """
    first = distributions[0]
    if all(isinstance(d, CategoricalDistribution) for d in distributions):
        choices: list[Any] = []
        for distribution in distributions:
            choices += [c for c in distribution.choices if c not in choices]
        return CategoricalDistribution(choices), lambda value: value
    if all(isinstance(d, FloatDistribution) for d in distributions):
        if any(d.log != first.log for d in distributions):
            return None
        low = min(d.low for d in distributions)
        high = max(d.high for d in distributions)
        if first.log:
            return FloatDistribution(math.log10(low), math.log10(high)), math.log10
        steps = {d.step for d in distributions}
        step = first.step if len(steps) == 1 else None
        return FloatDistribution(low, high, step=step), float
    if all(isinstance(d, IntDistribution) for d in distributions):
        if any(d.log != first.log for d in distributions):
            return None
        steps = {d.step for d in distributions}
        return IntDistribution(
            min(d.low for d in distributions),
            max(d.high for d in distributions),
            log=first.log,
            step=first.step if len(steps) == 1 else 1,
        ), int
    return None


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Silence Optuna's "A new study created in memory" for the scratch studies below."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _fanova_group(
    trials: list[FrozenTrial],
    params: list[str],
    subjects: list[str],
    scope: str,
    target: Callable[[float], float],
    skipped: dict[str, str],
    seed: int,
    min_trials: int,
) -> ImportanceGroup | None:
    """fANOVA over `trials` and `params`; `subjects` are the parameters this group is for (a
    subject that cannot be evaluated is recorded in `skipped`, the others are context)."""

    def skip(reason: str, names: Sequence[str]) -> None:
        for name in names:
            skipped.setdefault(name, reason)

    if len(trials) < max(2, min_trials):
        have = "trial has" if len(trials) == 1 else "trials have"
        skip(f"only {len(trials)} complete {have} it (importance needs {min_trials})", subjects)
        return None
    varying = [name for name in params if len({repr(t.params[name]) for t in trials}) > 1]
    skip(f"one value in {scope}", [name for name in subjects if name not in varying])
    values = [target(t.value) for t in trials]
    if max(values) == min(values):
        skip(f"the metric is the same in {scope}", subjects)
        return None

    # Why by hand: Optuna's evaluators (get_param_importances with fANOVA or PED-ANOVA) refuse
    # a parameter whose distribution differs between trials, and ours do by design: each
    # optimizer has its own learning-rate range (SGD 1e-3–1, Adam 1e-4–1e-2), and eps is
    # searched over different ranges by RMSprop and AdaBelief. Asked for all parameters they
    # silently drop those (intersection search space); asked for them by name they raise.
    # So the trials are copied, each parameter on one widened distribution (the union of its
    # ranges, same scale), into a scratch in-memory study, and evaluated there.
    shared: dict[str, tuple[BaseDistribution, Callable[[Any], Any]]] = {}
    for name in varying:
        widened = _widen([t.distributions[name] for t in trials])
        if widened is None:
            skip(f"its scale or type differs between trials in {scope}", [name])
        else:
            shared[name] = widened
    if not shared:
        return None
    with _quiet_optuna():
        scratch = optuna.create_study(direction="minimize")
        scratch.add_trials(
            [
                optuna.trial.create_trial(
                    params={name: convert(t.params[name]) for name, (_, convert) in shared.items()},
                    distributions={name: dist for name, (dist, _) in shared.items()},
                    value=value,
                )
                for t, value in zip(trials, values, strict=True)
            ]
        )
        importances = optuna.importance.get_param_importances(
            scratch,
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed),
            params=list(shared),
        )
    if not all(math.isfinite(value) for value in importances.values()):
        skip(f"fANOVA found no variance to explain in {scope}", subjects)
        return None
    optimizers = tuple(sorted({trial_optimizer(t) or "?" for t in trials}))
    return ImportanceGroup(
        scope=scope, trials=len(trials), optimizers=optimizers, importances=dict(importances)
    )


def parameter_importances(
    trials: Sequence[FrozenTrial],
    direction: StudyDirection,
    metric: str,
    seed: int = 0,
    min_trials: int = MIN_TRIALS,
) -> ParameterImportances:
    """PED-ANOVA and fANOVA importances over the conditional search space.

    Only the search's complete trials count (not confirmation runs or copies of other studies'
    trials). PED-ANOVA runs over all of them (it handles conditional parameters itself). For
    fANOVA, the parameters every complete trial has (``optimizer``, ``learning_rate`` and the
    other shared choices) are evaluated over all complete trials; each conditional parameter
    over only the trials that have it (``one_minus_momentum`` over the momentum and Nesterov
    trials), together with the parameters those trials share; parameters present in exactly
    the same trials share one evaluation. A parameter with fewer than two complete trials, or
    one value only, is skipped with the reason, never an error. Fewer than `min_trials`
    complete trials: nothing is evaluated, and `withheld` says why.
    """
    complete = search_results(trials)
    left_out = len(finished(trials)) - len(complete)
    values = [t.value for t in complete]
    log_target = spans_decades(values)
    target: Callable[[float], float] = math.log10 if log_target else float
    target_name = f"log10({metric})" if log_target else metric
    reason = withheld(len(complete), min_trials)
    if reason is not None:
        return ParameterImportances({}, None, {}, {}, target_name, reason, left_out)
    skipped: dict[str, str] = {}
    names = sorted({name for t in complete for name in t.params})
    shared = [name for name in names if all(name in t.params for t in complete)]
    conditional_names = [name for name in names if name not in shared]
    first = ["optimizer", "learning_rate"]
    shared.sort(key=lambda name: (first.index(name) if name in first else 2, name))

    overall = _fanova_group(
        complete,
        shared,
        shared,
        f"all {len(complete)} complete trials",
        target,
        skipped,
        seed,
        min_trials,
    )

    by_subset: dict[tuple[int, ...], list[str]] = {}
    for name in conditional_names:
        key = tuple(t.number for t in complete if name in t.params)
        by_subset.setdefault(key, []).append(name)
    conditional: dict[str, ImportanceGroup] = {}
    for numbers, subjects in by_subset.items():
        subset = [t for t in complete if t.number in set(numbers)]
        params = [name for name in names if all(name in t.params for t in subset)]
        types = sorted({trial_optimizer(t) or "?" for t in subset})
        scope = f"the {len(subset)} complete trials with {subjects[0]} ({', '.join(types)})"
        group = _fanova_group(subset, params, subjects, scope, target, skipped, seed, min_trials)
        if group is None:
            continue
        for name in subjects:
            if name in group.importances:
                conditional[name] = group
    return ParameterImportances(
        ped_anova=ped_anova(complete, direction),
        overall=overall,
        conditional=conditional,
        skipped={name: reason for name, reason in skipped.items() if name not in conditional},
        target=target_name,
        left_out=left_out,
    )
