"""The report's HTML page: the study's facts, its figures, the importances and the top trials.

Self-contained (the figures are PNG files beside it, referenced by relative paths, so the
folder can be moved); every value shown is escaped.
"""

from __future__ import annotations

import datetime
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from tuner.search.space import knob_name, sampled_scales
from tuner.storage.urls import mask_url
from tuner.study.importance import ParameterImportances
from tuner.study.results import (
    FINISHED_OUTCOMES,
    count_sentence,
    diverged,
    states_by_optimizer,
    trial_config,
    trial_optimizer,
)
from tuner.views.display import describe_config, describe_ranked, format_value
from tuner.views.report.snapshot import StudySnapshot

#: Rows in the HTML table of top trials.
TOP_TRIALS = 15


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


def page(
    snapshot: StudySnapshot, figures: dict[str, Path], importances: ParameterImportances
) -> str:
    """The report's ``index.html``: facts, figures and tables, in reading order."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>tuner report: {_escape(snapshot.name)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Study <code>{_escape(snapshot.name)}</code></h1>",
        _table(None, _facts(snapshot), "facts"),
    ]

    def image(key: str, alt: str) -> None:
        if key in figures:
            parts.append(f'<img src="{_escape(figures[key].name)}" alt="{_escape(alt)}">')

    metric = snapshot.metric
    parts.append(f"<h2>Best {_escape(metric)} per optimizer</h2>")
    image("best_by_optimizer", f"best {metric} per optimizer type")
    parts.append(_per_optimizer(snapshot))
    parts.append("<h2>Learning curves of the best trials</h2>")
    image("learning_curves", "per-epoch curves of the best trial of each optimizer type")
    if "landscape" in figures:
        parts.append("<h2>Paths on the landscape</h2>")
        image("landscape", "the optimizers' paths over the loss surface")
    parts.append("<h2>Optimization history</h2>")
    image("history", "value per trial number with the best so far, pruned and failed trials")
    parts.append("<h2>Parameter importance: PED-ANOVA and fANOVA</h2>")
    image("importance", "PED-ANOVA and fANOVA parameter importances")
    parts += _importances(importances)
    parts += _top_trials(snapshot)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _facts(snapshot: StudySnapshot) -> list[tuple[str, Any]]:
    spec, metric = snapshot.spec, snapshot.metric
    winner = next(iter(snapshot.ranked_by_optimizer.values()), None)

    return [
        ("study", snapshot.name),
        ("description", spec.get("description", "")),
        ("workload", (spec.get("workload") or {}).get("name", "—")),
        ("workload options", json.dumps((spec.get("workload") or {}).get("options", {}))),
        ("metric", metric),
        ("direction", snapshot.direction_name),
        ("trials", count_sentence(snapshot.trials)),
        (
            "best",
            f"trial {winner.trial.number}: {metric} = {format_value(winner.trial.value)}; "
            f"{describe_ranked(winner)}"
            if winner
            else "—",
        ),
        (
            "sampler / pruner",
            f"{(spec.get('sampler') or {}).get('name', '—')} / "
            f"{(spec.get('pruner') or {}).get('name', '—')}",
        ),
        ("storage", mask_url(snapshot.storage_url)),
        ("generated", datetime.datetime.now().isoformat(timespec="seconds")),
    ]


def _per_optimizer(snapshot: StudySnapshot) -> str:
    per_optimizer, metric = snapshot.best_by_optimizer, snapshot.metric
    rows = []
    for optimizer, states in states_by_optimizer(snapshot.trials, per_optimizer).items():
        trial = per_optimizer.get(optimizer)
        config = trial_config(trial) if trial else None
        rows.append(
            [
                optimizer,
                format_value(trial.value if trial else None),
                trial.number if trial else "—",
                f"{config.learning_rate:.4g}" if config else "—",
                *[states[name] for name in FINISHED_OUTCOMES],
                describe_ranked(snapshot.ranked_by_optimizer[optimizer]) if trial else "—",
            ]
        )
    return _table(
        [
            "optimizer",
            f"best {metric}",
            "trial",
            "learning rate",
            *FINISHED_OUTCOMES,
            "fresh seeds",
        ],
        rows,
    )


def _importances(found: ParameterImportances) -> list[str]:
    """The importance tables, parameters by the names users know, each transformed scale said
    once; or why no importance is shown."""
    if found.withheld:
        return [f"<p><strong>No importance shown</strong>: {_escape(found.withheld)}.</p>"]
    parts = [
        "<p>Two evaluators, side by side. <strong>PED-ANOVA</strong> is what optuna-dashboard "
        "shows: how much each parameter sets the top 10 % of trials apart from the rest. "
        f"<strong>fANOVA</strong>: the share of the variance of {_escape(found.target)} each "
        "parameter explains, within each set of trials (learning rate and optimizer over all "
        "complete trials; each conditional knob over the trials that have it).</p>"
    ]
    if found.left_out:
        parts.append(
            f"<p>Over the search's trials only: {found.left_out} confirmation runs and copies "
            "of earlier studies' trials are left out, which optuna-dashboard's chart counts, "
            "so its numbers differ here.</p>"
        )
    groups = ([found.overall] if found.overall else []) + list(
        {id(g): g for g in found.conditional.values()}.values()
    )
    rows = [
        ["PED-ANOVA", "all complete trials", knob_name(param), f"{value:.3f}"]
        for param, value in found.ped_anova.items()
    ]
    rows += [
        ["fANOVA", group.scope, knob_name(param), f"{value:.3f}"]
        for group in groups
        for param, value in group.importances.items()
    ]
    if rows:
        parts.append(_table(["evaluator", "trials", "parameter", "importance"], rows))
    shown = {*found.ped_anova, *(param for group in groups for param in group.importances)}
    scales = sampled_scales(shown)
    if scales:
        parts.append(f"<p>{_escape(scales)}.</p>")
    if found.skipped:
        skipped = sorted((knob_name(param), why) for param, why in found.skipped.items())
        parts.append(_table(["parameter not evaluated by fANOVA", "why"], skipped))
    return parts


def _top_trials(snapshot: StudySnapshot) -> list[str]:
    metric, parts = snapshot.metric, []
    top = []
    for rank, trial in enumerate(snapshot.ranked[:TOP_TRIALS], start=1):
        config = trial_config(trial)
        top.append(
            [
                rank,
                trial.number,
                format_value(trial.value),
                trial_optimizer(trial) or "—",
                describe_config(config),  # the line `tuner run` prints, the rate first
                trial.user_attrs.get("epochs_run", "—"),
            ]
        )
    parts.append(f"<h2>Top {len(top)} trials</h2>")
    parts.append(
        _table(
            ["rank", "trial", metric, "optimizer", "configuration", "epochs_run"],
            top,
            "top-trials",
        )
    )
    reasons = [
        [t.number, trial_optimizer(t) or "—", diverged(t) or t.user_attrs["fail_reason"]]
        for t in snapshot.trials
        if diverged(t) or (t.state == TrialState.FAIL and "fail_reason" in t.user_attrs)
    ]
    if reasons:
        parts.append(f"<h2>Diverged and failed trials ({len(reasons)})</h2>")
        parts.append(_table(["trial", "optimizer", "reason"], reasons[:50]))
    return parts
