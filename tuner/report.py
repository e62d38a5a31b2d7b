"""`tuner report STUDY --out DIR`: a static report of one study, readable without a server.

matplotlib (its Agg canvas, no pyplot, no browser) draws the figures as PNG files, and one
self-contained `index.html` shows them with the study's facts and its top trials:

- ``best_by_optimizer.png``: the best validation metric of each optimizer type;
- ``learning_curves.png``: the per-epoch curves of the best trial of each optimizer type (the
  seeds' "Optimizer Comparison on MNIST" figure);
- ``importance.png``: fANOVA parameter importances over the conditional search space;
- ``history.png``: each trial's value by trial number, best so far, pruned and failed trials;
- ``landscape.png`` (landscape workloads only): the optimizers' paths over the surface.

Everything is read from the study database: the trials' ``config`` and ``curve`` user
attributes and the study's ``spec`` (see the README's "what each trial records").
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import html
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from tuner.display import describe_config, format_value
from tuner.errors import EmptyStudyError
from tuner.results import (
    best_trials_by_optimizer,
    direction_sign,
    open_study,
    trial_config,
    trial_optimizer,
)
from tuner.storage import mask_url
from tuner.study import count_states

#: The workloads whose parameters are a point on a known surface (tuner.workloads.landscapes).
LANDSCAPES = ("rosenbrock", "himmelblau", "double_well")
#: Rows in the HTML table of top trials.
TOP_TRIALS = 15
#: A grid study with at most this many complete trials draws every trial's path, not only
#: the best of each optimizer type (the seeds' head-to-head demos repeat each a few times).
ALL_PATHS_UP_TO = 40
#: A positive metric whose largest value is this many times its smallest is drawn on a log axis.
LOG_SPAN = 100.0
#: Where the landscapes are usually looked at, and their known minima.
_VIEWS = {"rosenbrock": ((-2.0, 2.0), (-1.0, 3.0)), "himmelblau": ((-5.0, 5.0), (-5.0, 5.0))}
_MINIMA_2D = {
    "rosenbrock": [(1.0, 1.0)],
    "himmelblau": [
        (3.0, 2.0),
        (-2.805118, 3.131312),
        (-3.779310, -3.283186),
        (3.584428, -1.848126),
    ],
}

FIGURE_DPI = 100


# --------------------------------------------------------------------------------------------
# Parameter importance over the conditional search space
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportanceGroup:
    """fANOVA importances over one set of complete trials; they sum to 1 within the group.

    Attributes:
        scope: which trials, in words ("all 24 complete trials").
        trials: how many trials the evaluation saw.
        importances: parameter → share of the metric's variance, largest first.
    """

    scope: str
    trials: int
    importances: dict[str, float]


@dataclass(frozen=True)
class ParameterImportances:
    """Importances of a study's parameters, each over the trials that have it.

    Attributes:
        overall: the parameters every complete trial has (``optimizer``, ``learning_rate``,
            ``schedule``, ...) over all complete trials; None when it could not be evaluated.
        conditional: each conditional parameter (``one_minus_momentum``, ``one_minus_beta1``,
            ...) → the group evaluated over the trials that have it, which holds it together
            with the parameters those trials share.
        skipped: parameter → why it has no importance (too few trials, a single value, ...).
        target: what was explained: the metric, or ``log10(metric)`` for a positive metric
            spanning decades (a landscape's loss), where the raw values would let a few bad
            trials own all the variance.
    """

    overall: ImportanceGroup | None
    conditional: dict[str, ImportanceGroup]
    skipped: dict[str, str]
    target: str


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return [
        trial
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if trial.value is not None and math.isfinite(trial.value)
    ]


def _spans_decades(values: Sequence[float]) -> bool:
    return bool(values) and min(values) > 0 and max(values) / min(values) > LOG_SPAN


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


def _evaluate(
    trials: list[FrozenTrial],
    params: list[str],
    subjects: list[str],
    scope: str,
    target: Callable[[float], float],
    skipped: dict[str, str],
    seed: int,
) -> ImportanceGroup | None:
    """fANOVA over `trials` and `params`; `subjects` are the parameters this group is for (a
    subject that cannot be evaluated is recorded in `skipped`, the others are context)."""

    def skip(reason: str, names: Sequence[str]) -> None:
        for name in names:
            skipped.setdefault(name, reason)

    if len(trials) < 2:
        skip(f"only {len(trials)} complete trial has it", subjects)
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
    return ImportanceGroup(scope=scope, trials=len(trials), importances=dict(importances))


def parameter_importances(study: optuna.Study, seed: int = 0) -> ParameterImportances:
    """fANOVA importances over the conditional search space.

    The parameters every complete trial has (``optimizer``, ``learning_rate`` and the other
    shared choices) are evaluated over all complete trials. Each conditional parameter is
    evaluated over only the trials that have it (``one_minus_momentum`` over the momentum and
    Nesterov trials), together with the parameters those trials share; parameters present in
    exactly the same trials share one evaluation. A parameter with fewer than two complete
    trials, or one value only, is skipped with the reason, never an error.
    """
    complete = _complete(study)
    values = [t.value for t in complete]
    log_target = _spans_decades(values)
    target: Callable[[float], float] = math.log10 if log_target else float
    metric = study.user_attrs.get("metric", "value")
    skipped: dict[str, str] = {}
    names = sorted({name for t in complete for name in t.params})
    shared = [name for name in names if all(name in t.params for t in complete)]
    conditional_names = [name for name in names if name not in shared]
    first = ["optimizer", "learning_rate"]
    shared.sort(key=lambda name: (first.index(name) if name in first else 2, name))

    overall = _evaluate(
        complete,
        shared,
        shared,
        f"all {len(complete)} complete trials",
        target,
        skipped,
        seed,
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
        group = _evaluate(subset, params, subjects, scope, target, skipped, seed)
        if group is None:
            continue
        for name in subjects:
            if name in group.importances:
                conditional[name] = group
    return ParameterImportances(
        overall=overall,
        conditional=conditional,
        skipped={name: reason for name, reason in skipped.items() if name not in conditional},
        target=f"log10({metric})" if log_target else metric,
    )


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float, columns: int = 1) -> tuple[Figure, Any]:
    figure = Figure(figsize=(width, height), dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)  # the Agg canvas: PNGs without pyplot or a display
    return figure, figure.subplots(1, columns, squeeze=False)[0]


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, format="png", dpi=FIGURE_DPI)
    return path


def _message(axes: Any, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=axes.transAxes)
    axes.set_xticks([])
    axes.set_yticks([])


def _colours(study: optuna.Study, trials: list[FrozenTrial]) -> dict[str, Any]:
    """One colour per optimizer type, in the study file's order, the same in every figure."""
    from matplotlib import colormaps

    order = list((study.user_attrs.get("spec") or {}).get("search", {}).get("optimizers", []))
    order += sorted({trial_optimizer(t) for t in trials if trial_optimizer(t)} - set(order))
    palette = colormaps["tab10" if len(order) <= 10 else "tab20"]
    return {name: palette(index % palette.N) for index, name in enumerate(order)}


def _shared_learning_rate(trials: list[FrozenTrial]) -> float | None:
    """The learning rate all of `trials` used, when they share one (grid studies fix it)."""
    rates = {config.learning_rate for t in trials if (config := trial_config(t)) is not None}
    return rates.pop() if len(rates) == 1 else None


def _lr_note(trial: FrozenTrial) -> str:
    config = trial_config(trial)
    return f" (lr={config.learning_rate:.3g})" if config is not None else ""


def _optimizer_label(name: str, trials: list[FrozenTrial]) -> str:
    rate = _shared_learning_rate([t for t in trials if trial_optimizer(t) == name])
    return f"{name} (lr={rate:.3g})" if rate is not None else name


def _plot_best_by_optimizer(
    study: optuna.Study, trials: list[FrozenTrial], colours: dict[str, Any], path: Path
) -> Path:
    metric = study.user_attrs.get("metric", "value")
    best = best_trials_by_optimizer(study)
    figure, (axes,) = _new_figure(max(6.0, 1.3 * len(best) + 2.5), 4.5)
    names = list(best)
    values = [best[name].value for name in names]
    bars = axes.bar(
        range(len(names)), values, color=[colours.get(name, "grey") for name in names], width=0.6
    )
    axes.bar_label(bars, labels=[format_value(value) for value in values], padding=3)
    axes.set_xticks(
        range(len(names)), [f"{name}\ntrial {best[name].number}" for name in names], fontsize=9
    )
    if _spans_decades(values):
        axes.set_yscale("log")
    axes.margins(y=0.15)
    axes.axhline(0.0, color="black", linewidth=0.6)
    axes.set_ylabel(metric)
    axes.set_title(
        f"{study.study_name}: best {metric} per optimizer ({study.direction.name.lower()})"
    )
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def _curve(trial: FrozenTrial) -> list[dict[str, Any]]:
    return list(trial.user_attrs.get("curve") or [])


def _plot_learning_curves(
    study: optuna.Study, trials: list[FrozenTrial], colours: dict[str, Any], path: Path
) -> Path:
    metric = study.user_attrs.get("metric", "value")
    best = best_trials_by_optimizer(study)
    curves = {name: _curve(trial) for name, trial in best.items()}
    keys = [metric]
    if metric != "train_loss" and any("train_loss" in row for c in curves.values() for row in c):
        keys.append("train_loss")
    figure, panels = _new_figure(6.0 * len(keys), 4.8, columns=len(keys))
    for axes, key in zip(panels, keys, strict=True):
        plotted: list[float] = []
        for name, curve in curves.items():
            rows = [row for row in curve if key in row and row[key] is not None]
            if not rows:
                continue
            epochs = [row["epoch"] for row in rows]
            values = [float(row[key]) for row in rows]
            plotted += values
            axes.plot(
                epochs,
                values,
                marker="o" if len(rows) <= 30 else None,
                markersize=4,
                color=colours.get(name, "grey"),
                label=f"{name}, trial {best[name].number}{_lr_note(best[name])}",
            )
        if not plotted:
            _message(axes, f"no per-epoch {key} recorded")
            continue
        if _spans_decades(plotted):
            axes.set_yscale("log")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("epoch")
        axes.set_ylabel(key)
        what = "training loss (mean over the epoch)" if key == "train_loss" else key
        axes.set_title(what)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(f"{study.study_name}: learning curves of the best trial per optimizer")
    return _save(figure, path)


def _plot_importances(study: optuna.Study, importances: ParameterImportances, path: Path) -> Path:
    panels_data: list[tuple[str, list[tuple[str, float]]]] = []
    if importances.overall is not None:
        rows = list(importances.overall.importances.items())
        panels_data.append((f"over {importances.overall.scope}", rows))
    if importances.conditional:
        rows = []
        for name, group in importances.conditional.items():
            optimizers = group.scope.rsplit("(", 1)[-1].rstrip(")")
            rows.append((f"{name}\n{group.trials} trials: {optimizers}", group.importances[name]))
        panels_data.append(("each conditional parameter, over the trials that have it", rows))
    height = 1.6 + 0.45 * max((len(rows) for _, rows in panels_data), default=2)
    figure, panels = _new_figure(
        6.5 * max(len(panels_data), 1), max(height, 3.5), len(panels_data) or 1
    )
    if not panels_data:
        reasons = "; ".join(f"{k}: {v}" for k, v in importances.skipped.items()) or "no parameter"
        _message(panels[0], f"No importance could be evaluated.\n{reasons}")
    for axes, (title, rows) in zip(panels, panels_data, strict=False):
        rows = sorted(rows, key=lambda row: row[1])
        bars = axes.barh(range(len(rows)), [value for _, value in rows], color="tab:blue")
        axes.bar_label(bars, labels=[f"{value:.2f}" for _, value in rows], padding=3)
        axes.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
        axes.set_xlim(0, 1.12)
        axes.set_xlabel(f"fANOVA importance (share of the variance of {importances.target})")
        axes.set_title(title, fontsize=10)
        axes.grid(axis="x", alpha=0.3)
    figure.suptitle(f"{study.study_name}: parameter importance")
    return _save(figure, path)


def _plot_history(
    study: optuna.Study, trials: list[FrozenTrial], colours: dict[str, Any], path: Path
) -> Path:
    from matplotlib.transforms import blended_transform_factory

    metric = study.user_attrs.get("metric", "value")
    figure, (axes,) = _new_figure(9.0, 4.8)
    complete = sorted(_complete(study), key=lambda t: t.number)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    for name, colour in colours.items():
        mine = [t for t in complete if trial_optimizer(t) == name]
        if mine:
            axes.scatter(
                [t.number for t in mine],
                [t.value for t in mine],
                color=colour,
                s=28,
                zorder=3,
                label=f"{name} (complete)",
            )
    others = [t for t in complete if trial_optimizer(t) not in colours]
    if others:
        axes.scatter([t.number for t in others], [t.value for t in others], color="grey", s=28)
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        axes.scatter(
            [t.number for t in pruned],
            last,
            marker="x",
            color="0.45",
            s=30,
            zorder=2,
            label="pruned (last reported value)",
        )
    plotted = [t.value for t in complete] + (
        [t.intermediate_values[max(t.intermediate_values)] for t in pruned] if pruned else []
    )
    if complete:
        sign = direction_sign(study)
        best_so_far, current = [], math.inf
        for trial in complete:
            current = min(current, sign * trial.value)
            best_so_far.append(sign * current)
        axes.step(
            [t.number for t in complete],
            best_so_far,
            where="post",
            color="black",
            linewidth=1.5,
            label="best so far",
        )
    if failed:
        # A failed trial has no value: a red mark on the top edge, at its trial number.
        edge = blended_transform_factory(axes.transData, axes.transAxes)
        axes.scatter(
            [t.number for t in failed],
            [0.97] * len(failed),
            marker="v",
            color="tab:red",
            s=36,
            transform=edge,
            clip_on=False,
            label=f"failed ({len(failed)}, no value)",
        )
    if _spans_decades(plotted):
        axes.set_yscale("log")
    numbers = [t.number for t in [*complete, *pruned, *failed]]
    axes.set_xlim(min(numbers) - 0.5, max(numbers) + 0.5)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("trial number")
    axes.set_ylabel(metric)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    counts = count_states(trials)
    axes.set_title(
        f"{study.study_name}: optimization history — {counts[TrialState.COMPLETE]} complete, "
        f"{counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed"
    )
    return _save(figure, path)


# --------------------------------------------------------------------------------------------
# Landscapes: the optimizers' paths over the surface
# --------------------------------------------------------------------------------------------


def _landscape_start(workload: dict[str, Any]) -> list[float]:
    """Where every trial's point started: built by the workload itself, so the default start
    comes from tuner.workloads.landscapes rather than a copy here."""
    import torch

    from tuner.spec import WorkloadSpec
    from tuner.workloads import TrialContext, build_trainable

    trainable = build_trainable(
        WorkloadSpec(**workload), TrialContext(seed=0, device=torch.device("cpu"), batch_size=1)
    )
    return [float(v) for v in trainable.model.position.detach().tolist()]


def _path_trials(study: optuna.Study, complete: list[FrozenTrial]) -> tuple[list[FrozenTrial], str]:
    spec = study.user_attrs.get("spec") or {}
    if (spec.get("sampler") or {}).get("name") == "grid" and len(complete) <= ALL_PATHS_UP_TO:
        return sorted(complete, key=lambda t: t.number), f"all {len(complete)} complete trials"
    return list(best_trials_by_optimizer(study).values()), "the best trial of each optimizer"


def _surface(name: str) -> Callable[[Any], Any]:
    from tuner.workloads import landscapes

    return getattr(landscapes, name)


def _plot_landscape_2d(
    study: optuna.Study,
    name: str,
    start: list[float],
    trials: list[FrozenTrial],
    colours: dict[str, Any],
    path: Path,
) -> Path:
    import torch

    complete = _complete(study)
    chosen, which = _path_trials(study, complete)
    paths = []
    for trial in chosen:
        points = [start] + [[row["x"], row["y"]] for row in _curve(trial) if "x" in row]
        paths.append((trial, np.asarray(points, dtype=float)))

    (x_low, x_high), (y_low, y_high) = _VIEWS.get(name, ((-3.0, 3.0), (-3.0, 3.0)))
    every = np.concatenate([p for _, p in paths] + [np.asarray([start])])
    width, height = x_high - x_low, y_high - y_low
    x_low = max(min(x_low, every[:, 0].min()), x_low - width)
    x_high = min(max(x_high, every[:, 0].max()), x_high + width)
    y_low = max(min(y_low, every[:, 1].min()), y_low - height)
    y_high = min(max(y_high, every[:, 1].max()), y_high + height)
    pad_x, pad_y = 0.05 * (x_high - x_low), 0.05 * (y_high - y_low)
    xs = np.linspace(x_low - pad_x, x_high + pad_x, 300)
    ys = np.linspace(y_low - pad_y, y_high + pad_y, 300)
    grid_x, grid_y = np.meshgrid(xs, ys)
    with torch.no_grad():
        z = _surface(name)(torch.stack([torch.from_numpy(grid_x), torch.from_numpy(grid_y)]))
    z = z.numpy()
    # Quantile levels: contours where the surface actually varies, whatever its scale.
    levels = np.unique(np.quantile(z, np.linspace(0.0, 1.0, 18) ** 2))

    figure, (axes,) = _new_figure(8.0, 6.5)
    axes.contourf(grid_x, grid_y, z, levels=levels, cmap="Greys_r", alpha=0.55)
    axes.contour(grid_x, grid_y, z, levels=levels, colors="0.35", linewidths=0.4)
    minima = _MINIMA_2D.get(name, [])
    if minima:
        axes.scatter(
            *zip(*minima, strict=True),
            marker="*",
            s=220,
            color="gold",
            edgecolor="black",
            zorder=5,
            label="minimum",
        )
    axes.scatter(*start, marker="o", s=70, color="black", zorder=5, label=f"start {tuple(start)}")
    labelled: set[str] = set()
    many = len(paths) > len(colours)
    # Longest paths first and widest, so a path that stops short on top of another (SGD
    # crawling down the same valley that momentum runs through) stays visible.
    paths.sort(key=lambda item: -float(np.abs(np.diff(item[1], axis=0)).sum()))
    for index, (trial, points) in enumerate(paths):
        optimizer = trial_optimizer(trial) or "?"
        colour = colours.get(optimizer, "grey")
        label = None
        if optimizer not in labelled:
            labelled.add(optimizer)
            if many:
                label = _optimizer_label(optimizer, complete)
            else:
                label = f"{optimizer}{_lr_note(trial)}, trial {trial.number}: "
                label += format_value(trial.value)
        axes.plot(
            points[:, 0],
            points[:, 1],
            color=colour,
            linewidth=1.2 if many else max(4.5 - 1.5 * index, 1.5),
            alpha=0.6 if many else 0.9,
            marker="o",
            markersize=2.5,
            markevery=max(1, len(points) // 50),
            label=label,
            zorder=3 + index,
        )
        axes.scatter(
            *points[-1], marker="X", s=70, color=colour, edgecolor="black", zorder=4 + len(paths)
        )
    axes.set_xlim(xs[0], xs[-1])
    axes.set_ylim(ys[0], ys[-1])
    axes.set_xlabel("x")
    axes.set_ylabel("y")
    axes.legend(fontsize=8, loc="best")
    axes.set_title(
        f"{study.study_name}\n{name}: paths of {which} (dots: epochs, × the end)", fontsize=11
    )
    return _save(figure, path)


def _plot_landscape_1d(
    study: optuna.Study,
    name: str,
    start: list[float],
    trials: list[FrozenTrial],
    colours: dict[str, Any],
    path: Path,
) -> Path:
    import torch

    surface = _surface(name)
    complete = _complete(study)
    chosen, which = _path_trials(study, complete)
    finals = {t.number: _curve(t)[-1]["x"] for t in chosen if _curve(t)}
    low = min([-2.0, *finals.values()])
    high = max([2.5, start[0], *finals.values()])
    low, high = max(low, -4.0), min(high, 4.0)
    xs = np.linspace(low, high, 800)
    with torch.no_grad():
        fs = surface(torch.from_numpy(xs)[None, :]).numpy()
    # The surface's own minima and barriers, found on the grid (no formula copied here).
    inner = np.arange(1, len(xs) - 1)
    minima = xs[inner[(fs[inner] < fs[inner - 1]) & (fs[inner] < fs[inner + 1])]]
    maxima = xs[inner[(fs[inner] > fs[inner - 1]) & (fs[inner] > fs[inner + 1])]]
    deepest = xs[int(np.argmin(fs))]
    barrier = None
    if len(maxima):
        between = [m for m in maxima if min(minima, default=m) < m < max(minima, default=m)]
        barrier = between[0] if between else None

    figure, (left, right) = _new_figure(13.0, 5.2, columns=2)
    left.plot(xs, fs, color="black", linewidth=1.5)
    left.scatter(
        [start[0]],
        [float(surface(torch.tensor([start[0]])))],
        marker="o",
        s=70,
        color="black",
        zorder=5,
        label=f"start x={start[0]:g}",
    )
    for x_min in minima:
        right.axhline(x_min, color="black", linestyle="--", linewidth=0.8)
    if barrier is not None:
        left.axvline(barrier, color="0.5", linestyle=":", linewidth=1)
        right.axhline(barrier, color="0.5", linestyle=":", linewidth=1)
    span = fs.max() - fs.min()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    names = [n for n in colours if any(trial_optimizer(t) == n for t in [*chosen, *failed])]
    for row, optimizer in enumerate(names):
        colour = colours[optimizer]
        mine = [t for t in chosen if trial_optimizer(t) == optimizer and t.number in finals]
        ends = np.asarray([finals[t.number] for t in mine], dtype=float)
        label = _optimizer_label(optimizer, [*complete, *failed])
        if barrier is not None and len(ends):
            deep = int(np.sum((ends < barrier) == (deepest < barrier)))
            label += f": {deep} of {len(ends)} end in the deep well"
        lost = sum(1 for t in failed if trial_optimizer(t) == optimizer)
        if lost:
            label += f", {lost} diverged (failed)"
        if len(ends):
            with torch.no_grad():
                on_curve = surface(torch.from_numpy(ends)[None, :]).numpy()
            left.scatter(ends, on_curve, color=colour, s=40, alpha=0.7, zorder=4, label=label)
            # A strip under the curve per optimizer: trials ending at the same x stay countable.
            level = fs.min() - (0.12 + 0.1 * row) * span
            jitter = np.linspace(-0.03, 0.03, len(ends)) * span
            left.scatter(ends, level + jitter, color=colour, s=18, alpha=0.8, marker="|")
            left.text(low, level, f" final x, {optimizer}", fontsize=7, va="center")
        else:
            left.plot([], [], color=colour, label=label)
        for trial in mine:
            curve = _curve(trial)
            right.plot(
                [0] + [r["epoch"] for r in curve],
                [start[0]] + [r["x"] for r in curve],
                color=colour,
                linewidth=1.0,
                alpha=0.55,
            )
    left.set_xlabel("x")
    left.set_ylabel(f"{name}(x)")
    left.set_title(f"final x of {which} (barrier dotted)")
    left.legend(fontsize=8, loc="upper center")
    left.grid(True, alpha=0.3)
    right.set_xlabel("epoch")
    right.set_ylabel("x")
    right.set_ylim(low, high)
    right.set_title("x per epoch (minima dashed, barrier dotted)")
    right.grid(True, alpha=0.3)
    figure.suptitle(f"{study.study_name}: {name}")
    return _save(figure, path)


# --------------------------------------------------------------------------------------------
# The HTML page
# --------------------------------------------------------------------------------------------


def _escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: Sequence[str] | None, rows: Sequence[Sequence[Any]], css: str = "") -> str:
    """An HTML table, every cell escaped; no header row when `header` is None."""
    head = ""
    if header is not None:
        cells = "".join(f"<th>{_escape(cell)}</th>" for cell in header)
        head = f"<thead><tr>{cells}</tr></thead>\n"
    body = "".join(
        "<tr>" + "".join(f"<td>{_escape(cell)}</td>" for cell in row) + "</tr>\n" for row in rows
    )
    attribute = f' class="{_escape(css)}"' if css else ""
    return f"<table{attribute}>{head}<tbody>\n{body}</tbody></table>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
.facts td:first-child { font-weight: bold; width: 12em; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


def _html(
    study: optuna.Study,
    trials: list[FrozenTrial],
    url: str,
    figures: dict[str, Path],
    importances: ParameterImportances,
) -> str:
    spec = study.user_attrs.get("spec") or {}
    metric = study.user_attrs.get("metric", "value")
    direction = study.direction.name.lower()
    counts = count_states(trials)
    complete = _complete(study)
    sign = direction_sign(study)
    ranked = sorted(complete, key=lambda t: sign * t.value)
    best = ranked[0]
    name = study.study_name

    facts = [
        ("study", name),
        ("description", spec.get("description", "")),
        ("workload", (spec.get("workload") or {}).get("name", "—")),
        ("workload options", json.dumps((spec.get("workload") or {}).get("options", {}))),
        ("metric", metric),
        ("direction", direction),
        (
            "trials",
            f"{len(trials)}: "
            + ", ".join(f"{counts[state]} {state.name.lower()}" for state in TrialState),
        ),
        ("best", f"trial {best.number}: {metric} = {format_value(best.value)}"),
        (
            "sampler / pruner",
            f"{(spec.get('sampler') or {}).get('name', '—')} / "
            f"{(spec.get('pruner') or {}).get('name', '—')}",
        ),
        ("storage", mask_url(url)),
        ("generated", datetime.datetime.now().isoformat(timespec="seconds")),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>tuner report: {_escape(name)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Study <code>{_escape(name)}</code></h1>",
        _table(None, facts, "facts"),
    ]

    def image(key: str, alt: str) -> None:
        if key in figures:
            parts.append(f'<img src="{_escape(figures[key].name)}" alt="{_escape(alt)}">')

    per_optimizer = best_trials_by_optimizer(study)
    by_type: dict[str, dict[TrialState, int]] = {}
    for trial in trials:
        optimizer = trial_optimizer(trial)
        if optimizer is not None:
            by_type.setdefault(optimizer, dict.fromkeys(TrialState, 0))[trial.state] += 1
    parts.append(f"<h2>Best {_escape(metric)} per optimizer</h2>")
    image("best_by_optimizer", f"best {metric} per optimizer type")
    rows = []
    for optimizer in [*per_optimizer, *sorted(set(by_type) - set(per_optimizer))]:
        trial = per_optimizer.get(optimizer)
        config = trial_config(trial) if trial else None
        states = by_type.get(optimizer, {})
        rows.append(
            [
                optimizer,
                format_value(trial.value if trial else None),
                trial.number if trial else "—",
                f"{config.learning_rate:.4g}" if config else "—",
                states.get(TrialState.COMPLETE, 0),
                states.get(TrialState.PRUNED, 0),
                states.get(TrialState.FAIL, 0),
            ]
        )
    parts.append(
        _table(
            [
                "optimizer",
                f"best {metric}",
                "trial",
                "learning rate",
                "complete",
                "pruned",
                "failed",
            ],
            rows,
        )
    )
    parts.append("<h2>Learning curves of the best trials</h2>")
    image("learning_curves", "per-epoch curves of the best trial of each optimizer type")
    if "landscape" in figures:
        parts.append("<h2>Paths on the landscape</h2>")
        image("landscape", "the optimizers' paths over the loss surface")
    parts.append("<h2>Optimization history</h2>")
    image("history", "value per trial number with the best so far, pruned and failed trials")

    parts.append("<h2>Parameter importance (fANOVA)</h2>")
    image("importance", "fANOVA parameter importances")
    groups = ([importances.overall] if importances.overall else []) + list(
        {id(g): g for g in importances.conditional.values()}.values()
    )
    importance_rows = [
        [group.scope, param, f"{value:.3f}"]
        for group in groups
        for param, value in group.importances.items()
    ]
    if importance_rows:
        parts.append(
            f"<p>Share of the variance of {_escape(importances.target)} each parameter explains, "
            "within each set of trials (learning rate and optimizer over all complete trials; "
            "each conditional parameter over the trials that have it).</p>"
        )
        parts.append(_table(["trials", "parameter", "importance"], importance_rows))
    if importances.skipped:
        parts.append(
            _table(["parameter not evaluated", "why"], sorted(importances.skipped.items()))
        )

    top = []
    for rank, trial in enumerate(ranked[:TOP_TRIALS], start=1):
        config = trial_config(trial)
        top.append(
            [
                rank,
                trial.number,
                format_value(trial.value),
                trial_optimizer(trial) or "—",
                f"{config.learning_rate:.4g}" if config else "—",
                describe_config(
                    config
                ),  # with the learning rate again: the line `tuner run` prints
                trial.user_attrs.get("epochs_run", "—"),
            ]
        )
    parts.append(f"<h2>Top {len(top)} trials</h2>")
    parts.append(
        _table(
            ["rank", "trial", metric, "optimizer", "learning rate", "configuration", "epochs_run"],
            top,
            "top-trials",
        )
    )
    reasons = [
        [t.number, trial_optimizer(t) or "—", t.user_attrs["fail_reason"]]
        for t in trials
        if t.state == TrialState.FAIL and "fail_reason" in t.user_attrs
    ]
    if reasons:
        parts.append(f"<h2>Failed trials ({len(reasons)})</h2>")
        parts.append(_table(["trial", "optimizer", "reason"], reasons[:50]))
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


#: The figures a report may hold; one a report did not draw is removed from its folder.
FIGURES = ("best_by_optimizer", "learning_curves", "landscape", "history", "importance")


def write_report(study: str, out_dir: Path, storage: str | None = None) -> Path:
    """Write the study's figures and ``index.html`` into `out_dir`; return the HTML's path.

    Args:
        study: the study's name.
        out_dir: the folder for the report (created if missing; a previous report's files in
            it are replaced).
        storage: a storage URL; else ``TUNER_STORAGE``, else the default SQLite file.

    Raises:
        StudyNotFoundError: no such study; the message lists the studies there are.
        EmptyStudyError: no trial has completed yet; nothing is written.
    """
    return _write(study, Path(out_dir), storage)[0]


def _write(study: str, out_dir: Path, storage: str | None) -> tuple[Path, dict[str, Path]]:
    loaded, url = open_study(study, storage)
    trials = loaded.get_trials(deepcopy=False)
    if not _complete(loaded):
        counts = count_states(trials)
        states = ", ".join(
            f"{counts[state]} {state.name.lower()}" for state in TrialState if counts[state]
        )
        raise EmptyStudyError(
            f"study {study!r} has no completed trial to report on yet "
            f"({states or 'no trials'}); run it first with tuner run STUDY_FILE"
        )

    importances = parameter_importances(loaded)
    colours = _colours(loaded, trials)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "best_by_optimizer": _plot_best_by_optimizer(
            loaded, trials, colours, out_dir / "best_by_optimizer.png"
        ),
        "learning_curves": _plot_learning_curves(
            loaded, trials, colours, out_dir / "learning_curves.png"
        ),
    }
    workload = (loaded.user_attrs.get("spec") or {}).get("workload") or {}
    if workload.get("name") in LANDSCAPES:
        start = _landscape_start(workload)
        draw = _plot_landscape_1d if len(start) == 1 else _plot_landscape_2d
        figures["landscape"] = draw(
            loaded, workload["name"], start, trials, colours, out_dir / "landscape.png"
        )
    figures["history"] = _plot_history(loaded, trials, colours, out_dir / "history.png")
    figures["importance"] = _plot_importances(loaded, importances, out_dir / "importance.png")
    for name in set(FIGURES) - set(figures):
        (out_dir / f"{name}.png").unlink(missing_ok=True)
    page = out_dir / "index.html"
    page.write_text(_html(loaded, trials, url, figures, importances), encoding="utf-8")
    return page, figures


def command(args: argparse.Namespace) -> int:
    """``tuner report STUDY --out DIR``: write the report, say where it went."""
    page, figures = _write(args.study, Path(args.out), args.storage)
    names = ", ".join(path.name for path in figures.values())
    print(f"Report on study {args.study}: {page}\n  figures: {names}")
    return 0
