"""The landscape figure of `tuner report`: the optimizers' paths over a known surface.

For the landscape workloads (`tuner.workloads.landscapes`), whose trials record the point's
position per epoch in their curve: contours and paths for 2-D surfaces, the final positions
and the position per epoch for the 1-D double well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from tuner.study.results import diverged, trial_optimizer
from tuner.views.display import format_value
from tuner.views.report.figures import curve, lr_note, new_figure, optimizer_label, save
from tuner.views.report.snapshot import StudySnapshot
from tuner.workloads.landscapes import SURFACES

#: A grid study with at most this many complete trials draws every trial's path, not only
#: the best of each optimizer type (the seeds' head-to-head demos repeat each a few times).
ALL_PATHS_UP_TO = 40


def draws(snapshot: StudySnapshot) -> bool:
    """Whether the study's workload is a landscape this figure can draw."""
    return snapshot.workload.get("name") in SURFACES


def landscape(snapshot: StudySnapshot, colours: dict[str, Any], path: Path) -> Path:
    """The paths over the surface: a contour map (2-D) or the curve and x per epoch (1-D)."""
    name = snapshot.workload["name"]
    # Where every trial's point started: the study file's start, else the surface's own.
    start = list((snapshot.workload.get("options") or {}).get("start") or SURFACES[name].start)
    draw = _landscape_1d if len(start) == 1 else _landscape_2d
    return draw(snapshot, name, [float(x) for x in start], colours, path)


def _path_trials(snapshot: StudySnapshot) -> tuple[list[FrozenTrial], str]:
    complete = snapshot.complete
    grid = (snapshot.spec.get("sampler") or {}).get("name") == "grid"
    if grid and len(complete) <= ALL_PATHS_UP_TO:
        return complete, f"all {len(complete)} complete trials"
    return list(snapshot.best_by_optimizer.values()), "the best trial of each optimizer"


def _landscape_2d(
    snapshot: StudySnapshot, name: str, start: list[float], colours: dict[str, Any], path: Path
) -> Path:
    import torch

    complete = snapshot.complete
    chosen, which = _path_trials(snapshot)
    paths = []
    for trial in chosen:
        points = [start] + [[row["x"], row["y"]] for row in curve(trial) if "x" in row]
        paths.append((trial, np.asarray(points, dtype=float)))

    surface = SURFACES[name]
    (x_low, x_high), (y_low, y_high) = surface.view
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
        z = surface.function(torch.stack([torch.from_numpy(grid_x), torch.from_numpy(grid_y)]))
    z = z.numpy()
    # Quantile levels: contours where the surface actually varies, whatever its scale.
    levels = np.unique(np.quantile(z, np.linspace(0.0, 1.0, 18) ** 2))

    figure, (axes,) = new_figure(8.0, 6.5)
    axes.contourf(grid_x, grid_y, z, levels=levels, cmap="Greys_r", alpha=0.55)
    axes.contour(grid_x, grid_y, z, levels=levels, colors="0.35", linewidths=0.4)
    minima = surface.minima
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
                label = optimizer_label(optimizer, complete)
            else:
                label = f"{optimizer}{lr_note(trial)}, trial {trial.number}: "
                label += format_value(trial.value)
        linewidth = 1.2 if many else max(4.5 - 1.5 * index, 1.5)
        axes.plot(
            points[:, 0],
            points[:, 1],
            color=colour,
            linewidth=linewidth,
            alpha=0.6 if many else 0.9,
            # Each recorded position (an epoch's end) as a dot wider than its line, edged in
            # white so that it shows on the line and on the paths beneath.
            marker="o",
            markersize=linewidth + 3.0,
            markeredgecolor="white",
            markeredgewidth=0.6,
            markevery=max(1, len(points) // 50),
            label=label,
            zorder=3 + index,
        )
        axes.scatter(
            *points[-1], marker="X", s=70, color=colour, edgecolor="black", zorder=4 + len(paths)
        )
    axes.set_xlim(xs[0], xs[-1])
    axes.set_ylim(ys[0], ys[-1])
    # Only each epoch's end is recorded: a straight line between two is no step the optimizer
    # took, and may cut across a ridge its steps went around (said under the axis, where the
    # layout keeps room for it).
    axes.set_xlabel(
        "x\n\nLines join the positions recorded at each epoch's end; the steps within an "
        "epoch\nare not recorded, and may have curved around what a line crosses.",
        fontsize=9,
    )
    axes.set_ylabel("y")
    axes.legend(fontsize=8, loc="best")
    axes.set_title(
        f"{snapshot.name}\n{name}: paths of {which} (•: the position at each epoch's end, "
        "×: the last)",
        fontsize=11,
    )

    return save(figure, path)


def _landscape_1d(
    snapshot: StudySnapshot, name: str, start: list[float], colours: dict[str, Any], path: Path
) -> Path:
    import torch

    surface = SURFACES[name].function
    ((view_low, view_high),) = SURFACES[name].view
    complete = snapshot.complete
    trials = snapshot.trials
    chosen, which = _path_trials(snapshot)
    finals = {t.number: curve(t)[-1]["x"] for t in chosen if curve(t)}
    low = min([view_low, *finals.values()])
    high = max([view_high, start[0], *finals.values()])
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

    figure, (left, right) = new_figure(13.0, 5.2, columns=2)
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
    failed = [t for t in trials if t.state == TrialState.FAIL or diverged(t)]
    names = [n for n in colours if any(trial_optimizer(t) == n for t in [*chosen, *failed])]
    for row, optimizer in enumerate(names):
        colour = colours[optimizer]
        mine = [t for t in chosen if trial_optimizer(t) == optimizer and t.number in finals]
        ends = np.asarray([finals[t.number] for t in mine], dtype=float)
        label = optimizer_label(optimizer, [*complete, *failed])
        if barrier is not None and len(ends):
            deep = int(np.sum((ends < barrier) == (deepest < barrier)))
            label += f": {deep} of {len(ends)} end in the deep well"
        lost = sum(1 for t in failed if trial_optimizer(t) == optimizer)
        if lost:
            label += f", {lost} diverged or failed"
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
            points = curve(trial)
            right.plot(
                [0] + [r["epoch"] for r in points],
                [start[0]] + [r["x"] for r in points],
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
    figure.suptitle(f"{snapshot.name}: {name}")
    return save(figure, path)
