"""The report's figures (PNG, matplotlib's Agg canvas: no pyplot, no display), each drawn from
the study snapshot: best value per optimizer, learning curves, history and importances."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.trial import FrozenTrial, TrialState

from tuner.search.space import knob_name, sampled_scales
from tuner.study.importance import ParameterImportances, spans_decades
from tuner.study.results import (
    FINISHED_OUTCOMES,
    count_outcomes,
    count_sentence,
    diverged,
    trial_config,
    trial_optimizer,
)
from tuner.views.display import format_value
from tuner.views.report.snapshot import StudySnapshot

FIGURE_DPI = 100


def new_figure(width: float, height: float, columns: int = 1) -> tuple[Figure, Any]:
    figure = Figure(figsize=(width, height), dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)  # the Agg canvas: PNGs without pyplot or a display
    return figure, figure.subplots(1, columns, squeeze=False)[0]


def save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, format="png", dpi=FIGURE_DPI)
    return path


def message(axes: Any, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=axes.transAxes)
    axes.set_xticks([])
    axes.set_yticks([])


def colours(snapshot: StudySnapshot) -> dict[str, Any]:
    """One colour per optimizer type, in the study file's order, the same in every figure."""
    from matplotlib import colormaps

    order = snapshot.optimizers
    palette = colormaps["tab10" if len(order) <= 10 else "tab20"]
    return {name: palette(index % palette.N) for index, name in enumerate(order)}


def _shared_learning_rate(trials: list[FrozenTrial]) -> float | None:
    """The learning rate all of `trials` used, when they share one (grid studies fix it)."""
    rates = {config.learning_rate for t in trials if (config := trial_config(t)) is not None}
    return rates.pop() if len(rates) == 1 else None


def lr_note(trial: FrozenTrial) -> str:
    config = trial_config(trial)
    return f" (lr={config.learning_rate:.3g})" if config is not None else ""


def optimizer_label(name: str, trials: list[FrozenTrial]) -> str:
    rate = _shared_learning_rate([t for t in trials if trial_optimizer(t) == name])
    return f"{name} (lr={rate:.3g})" if rate is not None else name


def best_by_optimizer(snapshot: StudySnapshot, colours: dict[str, Any], path: Path) -> Path:
    """Bars: the best value of each optimizer type, with its trial number; then every type
    the study tried without a result, marked with what became of its trials (pruned or
    diverged everywhere is a finding too)."""
    from matplotlib.transforms import blended_transform_factory

    metric = snapshot.metric
    best = snapshot.best_by_optimizer
    without = [name for name in snapshot.optimizers if name not in best]
    names = [*best, *without]
    figure, (axes,) = new_figure(max(6.0, 1.3 * len(names) + 2.5), 4.5)
    values = [best[name].value for name in best]
    bars = axes.bar(
        range(len(best)), values, color=[colours.get(name, "grey") for name in best], width=0.6
    )
    axes.bar_label(bars, labels=[format_value(value) for value in values], padding=3)
    labels = [f"{name}\ntrial {best[name].number}" for name in best]
    bottom = blended_transform_factory(axes.transData, axes.transAxes)
    for index, name in enumerate(without, start=len(best)):
        counts = count_outcomes(t for t in snapshot.trials if trial_optimizer(t) == name)
        fate = "\n".join(f"{counts[o]} {o}" for o in FINISHED_OUTCOMES[1:] if counts[o])
        axes.text(
            index,
            0.03,
            fate or "no trial",
            transform=bottom,
            ha="center",
            va="bottom",
            fontsize=8,
            color="0.35",
        )
        labels.append(f"{name}\nno result")
    axes.set_xticks(range(len(names)), labels, fontsize=9)
    axes.set_xlim(-0.6, len(names) - 0.4)
    if spans_decades(values):
        axes.set_yscale("log")  # a loss may span many decades between optimizers
    else:
        axes.axhline(0.0, color="black", linewidth=0.6)
    axes.margins(y=0.15)
    axes.set_ylabel(f"{metric} (log scale)" if axes.get_yscale() == "log" else metric)
    axes.set_title(f"{snapshot.name}: best {metric} per optimizer ({snapshot.direction_name})")
    axes.grid(axis="y", alpha=0.3)
    return save(figure, path)


def curve(trial: FrozenTrial) -> list[dict[str, Any]]:
    """A trial's per-epoch record (its ``curve`` user attribute)."""
    return list(trial.user_attrs.get("curve") or [])


def learning_curves(snapshot: StudySnapshot, colours: dict[str, Any], path: Path) -> Path:
    """The per-epoch metric (and training loss) of the best trial of each optimizer type."""
    metric = snapshot.metric
    best = snapshot.best_by_optimizer
    curves = {name: curve(trial) for name, trial in best.items()}
    keys = [metric]
    if metric != "train_loss" and any("train_loss" in row for c in curves.values() for row in c):
        keys.append("train_loss")
    figure, panels = new_figure(6.0 * len(keys), 4.8, columns=len(keys))
    for axes, key in zip(panels, keys, strict=True):
        plotted: list[float] = []
        for name, points in curves.items():
            rows = [row for row in points if key in row and row[key] is not None]
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
                label=f"{name}, trial {best[name].number}{lr_note(best[name])}",
            )
        if not plotted:
            message(axes, f"no per-epoch {key} recorded")
            continue
        if spans_decades(plotted):
            axes.set_yscale("log")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("epoch")
        axes.set_ylabel(key)
        what = "training loss (mean over the epoch)" if key == "train_loss" else key
        axes.set_title(what)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(f"{snapshot.name}: learning curves of the best trial per optimizer")
    return save(figure, path)


def history(snapshot: StudySnapshot, colours: dict[str, Any], path: Path) -> Path:
    """Each trial's value by trial number, the best so far, pruned and failed trials."""
    from matplotlib.transforms import blended_transform_factory

    metric = snapshot.metric
    trials = snapshot.trials
    figure, (axes,) = new_figure(9.0, 4.8)
    complete = snapshot.complete
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    failed = [t for t in trials if t.state == TrialState.FAIL or diverged(t)]
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
    last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
    if pruned:
        axes.scatter(
            [t.number for t in pruned],
            last,
            marker="x",
            color="0.45",
            s=30,
            zorder=2,
            label="pruned (last reported value)",
        )
    plotted = [t.value for t in complete] + last
    if complete:
        sign = snapshot.sign
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
        # A failed or diverged trial has no value to plot: a red mark on the top edge.
        edge = blended_transform_factory(axes.transData, axes.transAxes)
        axes.scatter(
            [t.number for t in failed],
            [0.97] * len(failed),
            marker="v",
            color="tab:red",
            s=36,
            transform=edge,
            clip_on=False,
            label=f"diverged or failed ({len(failed)}, no value)",
        )
    if spans_decades(plotted):
        axes.set_yscale("log")
    numbers = [t.number for t in [*complete, *pruned, *failed]]
    # A trial's width of room at each end, at least 2 % of the axis: half a trial left the
    # last trial's marker on the frame, half cut off by it.
    pad = max(1.0, 0.02 * (max(numbers) - min(numbers)))
    axes.set_xlim(min(numbers) - pad, max(numbers) + pad)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("trial number")
    axes.set_ylabel(metric)
    axes.grid(True, alpha=0.3)
    # Beside the axes: inside, "best" still covered the last trials' markers.
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.set_title(f"{snapshot.name}: optimization history — {count_sentence(trials)}")
    return save(figure, path)


def importances(snapshot: StudySnapshot, found: ParameterImportances, path: Path) -> Path:
    """PED-ANOVA (what optuna-dashboard shows) beside fANOVA, each panel labelled; parameters
    by the names users know (``momentum``, not ``one_minus_momentum``); or why none is shown."""
    panels_data: list[tuple[str, str, list[tuple[str, float]]]] = []
    if found.ped_anova:
        rows = [(knob_name(name), value) for name, value in found.ped_anova.items()]
        title = f"PED-ANOVA (as optuna-dashboard), {len(snapshot.complete)} trials"
        panels_data.append((title, "PED-ANOVA importance (what sets the top 10 % apart)", rows))
    axis = f"fANOVA importance (share of the variance of {found.target})"
    if found.overall is not None:
        rows = [(knob_name(name), value) for name, value in found.overall.importances.items()]
        panels_data.append((f"fANOVA over {found.overall.scope}", axis, rows))
    if found.conditional:
        rows = [
            (
                f"{knob_name(name)}\n{group.trials} trials: {', '.join(group.optimizers)}",
                group.importances[name],
            )
            for name, group in found.conditional.items()
        ]
        panels_data.append(("fANOVA, each conditional knob over its trials", axis, rows))
    height = 1.6 + 0.45 * max((len(rows) for *_, rows in panels_data), default=2)
    figure, panels = new_figure(
        5.5 * max(len(panels_data), 1), max(height, 3.5), len(panels_data) or 1
    )
    if not panels_data:
        reasons = found.withheld or (
            "; ".join(f"{k}: {v}" for k, v in found.skipped.items()) or "no parameter"
        )
        message(panels[0], f"No importance shown.\n{reasons}")
    for axes, (title, axis, rows) in zip(panels, panels_data, strict=False):
        rows = sorted(rows, key=lambda row: row[1])
        bars = axes.barh(range(len(rows)), [value for _, value in rows], color="tab:blue")
        axes.bar_label(bars, labels=[f"{value:.2f}" for _, value in rows], padding=3)
        axes.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
        axes.set_xlim(0, 1.12)
        axes.set_xlabel(axis, fontsize=8)
        axes.set_title(title, fontsize=10)
        axes.grid(axis="x", alpha=0.3)
    figure.suptitle(f"{snapshot.name}: parameter importance")
    scales = sampled_scales(
        [
            *found.ped_anova,
            *(found.overall.importances if found.overall else ()),
            *found.conditional,
        ]
    )
    if scales:
        figure.supxlabel(scales, fontsize=8)
    return save(figure, path)
