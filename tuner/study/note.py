"""The study's description in words (Markdown), written when a study is created.

`tuner.study.lifecycle.create_or_resume` calls `write_study_note` once, when it creates a study: the
workload, metric, search space, budget, sampler and pruner in words. It is stored where
optuna-dashboard keeps a study's note, so the dashboard shows it (and a person may edit it).
"""

from __future__ import annotations

import shlex
import warnings
from typing import TYPE_CHECKING

import optuna

from tuner.search.pruners import PRUNERS
from tuner.search.samplers import SAMPLERS, startup_trials
from tuner.search.schedules import SCHEDULES
from tuner.search.space import COMPLEMENT_PREFIX, LOOKAHEAD_ALPHA, LOOKAHEAD_K
from tuner.storage import optuna_internals as internals
from tuner.study.importance import MIN_TRIALS

if TYPE_CHECKING:
    from tuner.search.optimizers import Knob
    from tuner.spec import StudySpec


def _number(value: float) -> str:
    return f"{value:.6g}"  # 0.9999 stays 0.9999


def _knob(name: str, knob: Knob) -> str:
    if knob.low == knob.high:
        return f"{name} fixed at {_number(knob.low)}"
    span = f"{_number(knob.low)} – {_number(knob.high)}"
    if knob.scale == "log":
        return f"{name} {span} (log-uniform)"
    if knob.scale == "log_complement":
        return f"{name} {span} (searched as `{COMPLEMENT_PREFIX}{name}`, log-uniform)"
    return f"{name} {span} (uniform{', integer' if knob.scale == 'int' else ''})"


def _toggle(mode: str, parameter: str, on: str) -> str:
    if mode == "off":
        return "off"
    if mode == "on":
        return f"always on: {on}"
    return f"searched as `{parameter}` (on or off per trial); when on: {on}"


def _workload_lines(spec: StudySpec) -> list[str]:
    from tuner.workloads import REGISTRY

    workload = REGISTRY.get(spec.workload.name)
    if spec.workload.command:
        lines = [f"`{shlex.join(spec.workload.command)}`: a command run once per trial."]
        options = dict(spec.workload.options)
    elif workload is None:
        lines = [f"`{spec.workload.name}`: training code of your own, by import path."]
        options = dict(spec.workload.options)
    else:
        lines = [f"`{workload.name}`: {workload.description}."]
        options = workload.options.model_validate(spec.workload.options).model_dump()
    given = {key: value for key, value in options.items() if value is not None}  # None: default
    if given:
        listed = ", ".join(f"{key} = {value!r}" for key, value in given.items())
        lines.append(f"Options: {listed}.")
    dataset = options.get("dataset")
    if dataset:
        from tuner.workloads.datasets import DATASETS

        lines.append(f"Dataset: `{dataset}`, {DATASETS[dataset].description}.")
    elif workload is not None and not workload.uses_batches:
        lines.append("Dataset: none (a closed-form landscape: no data, no batch size).")
    elif workload is not None:
        lines.append("Dataset: synthetic, generated once from `data_seed` for the whole study.")
    return lines


def _search_lines(spec: StudySpec) -> list[str]:
    from tuner.workloads import uses_batches

    search = spec.search
    choices = spec.optimizer_choices()
    lines = [
        f"Each trial samples `optimizer` among {len(choices)}, then `learning_rate` "
        "log-uniformly in that optimizer's range, then that optimizer's own knobs. Knobs "
        f"near 1 (momentum, β's, α, ρ) are searched as `{COMPLEMENT_PREFIX}<name>` = 1 − "
        "<name> on a log scale.",
        "",
    ]
    for choice in choices:
        parts = [_knob("learning rate", choice.learning_rate)]
        parts += [_knob(name, knob) for name, knob in choice.knobs.items()]
        if not choice.knobs:
            parts.append("no other knob searched")
        if choice.fixed:
            fixed = ", ".join(f"{key} = {value!r}" for key, value in choice.fixed.items())
            parts.append(f"fixed: {fixed}")
        if search.weight_decay != "off":
            parts.append(_knob("weight decay", choice.weight_decay) + " when on")
        if choice.schedule_free:
            parts.append("keeps its own schedule (constant LR, no Lookahead)")
        lines.append(f"- **{choice.name}** (`{choice.target}`): {'; '.join(parts)}.")
    lines.append("")
    schedules = ", ".join(f"{name} ({SCHEDULES[name].description})" for name in search.schedules)
    if len(search.schedules) > 1:
        lines.append(f"- Schedules, searched as `schedule`: {schedules}.")
    else:
        lines.append(f"- Schedule: {schedules}.")
    if "warmup_cosine" in search.schedules:
        warmup = search.warmup_fraction
        low, high = warmup if isinstance(warmup, tuple) else (warmup, warmup)
        lines.append(
            "- Warmup (with warmup_cosine): "
            + (
                f"{_number(low)} of all steps"
                if low == high
                else f"`warmup_fraction` {_number(low)} – {_number(high)} of all steps (uniform)"
            )
            + "."
        )
    lines.append(
        "- Weight decay: "
        + _toggle(search.weight_decay, "use_weight_decay", "in the optimizer's range above")
        + "."
    )
    norm = search.max_grad_norm
    low, high = norm if isinstance(norm, tuple) else (norm, norm)
    clip = (
        f"max_grad_norm {_number(low)}"
        if low == high
        else f"`max_grad_norm` {_number(low)} – {_number(high)} (log-uniform)"
    )
    lookahead = ", ".join(
        _knob(f"`{name}`", knob)
        for name, knob in (("lookahead_k", LOOKAHEAD_K), ("lookahead_alpha", LOOKAHEAD_ALPHA))
    )
    lines += [
        f"- Gradient-norm clipping: {_toggle(search.grad_clipping, 'clip_gradients', clip)}.",
        f"- Lookahead: {_toggle(search.lookahead, 'lookahead', lookahead)}.",
    ]
    if not uses_batches(spec.workload):
        lines.append("- Batch size: not used (the workload has no data).")
    elif len(search.batch_sizes) > 1:
        sizes = ", ".join(str(size) for size in search.batch_sizes)
        lines.append(f"- Batch size, searched as `batch_size`: {sizes}.")
    else:
        lines.append(f"- Batch size: {search.batch_sizes[0]}.")
    return lines


def _pruner_line(spec: StudySpec) -> str:
    pruner = PRUNERS[spec.pruner.name]
    line = f"- Pruner: {pruner.describe(spec)}"
    if pruner.prunes:
        line += "; decided after each epoch from the values in storage, never after a trial's "
        line += "last epoch"
    return line + "."


def study_note(spec: StudySpec) -> str:
    """The study's dashboard note (Markdown): what the study searches, how, and for how long."""
    budget = []
    if spec.budget.trials is not None:
        budget.append(f"{spec.budget.trials} trials")
    if spec.budget.timeout_seconds is not None:
        budget.append(f"{_number(spec.budget.timeout_seconds)} s of wall time")
    sampler = SAMPLERS[spec.sampler.name].description
    if SAMPLERS[spec.sampler.name].startup is not None:
        sampler += f", after {startup_trials(spec)} random startup trials"
    lines = [f"# {spec.name}", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines += ["## Workload", "", *_workload_lines(spec), ""]
    lines += [
        "## Metric",
        "",
        f"`{spec.metric}`, {'minimized' if spec.direction == 'minimize' else 'maximized'}: "
        "reported after every epoch; a trial's value is the one after its last epoch.",
        "",
    ]
    lines += ["## Search space", "", *_search_lines(spec), ""]
    lines += [
        "## Budget",
        "",
        f"{' or '.join(budget)}{', whichever ends first' if len(budget) > 1 else ''}; "
        f"at most {spec.budget.epochs} epochs per trial.",
        "",
    ]
    if spec.budget.confirm:
        lines[-1:-1] = [
            "",
            f"After the search, the top {spec.budget.confirm.top} configurations are re-trained "
            f"on {spec.budget.confirm.seeds} fresh seeds each (trials with the user attribute "
            "`confirms`, outside the budget); rankings use the mean over those seeds.",
        ]
    if spec.search.warm_start:
        lines += [
            "## Warm start",
            "",
            f"Seeded when created from {', '.join(spec.search.warm_start)}: their best "
            "configurations were queued as the first trials, and their finished trials that "
            "this space samples alike were copied in (user attribute `copied_from`). The "
            "study's user attribute `warm_start` says what came from each.",
            "",
        ]
    lines += [
        "## Sampler and pruner",
        "",
        f"- Sampler: {sampler}; seed {spec.seed}.",
        _pruner_line(spec),
        "",
        "Each COMPLETE trial's learning curve is attached as an artifact; every trial's "
        "user attributes hold its `config`, `curve`, `seed`, `device` and `wall_seconds`.",
        "",
        "## Parameter importance",
        "",
        f"The Hyperparameter Importance chart (PED-ANOVA) is shown once the study has "
        f"{MIN_TRIALS} complete trials; below that it would rank noise, and the page says so "
        f"in its place. `tuner report {spec.name}` shows PED-ANOVA beside fANOVA. Read "
        f"`{COMPLEMENT_PREFIX}momentum` as momentum (and likewise for the other knobs near 1).",
        "",
        # Said where the chart is read: the note is the same under either dashboard.
        "Served by `tuner dashboard`, the chart reads this study's search alone, as the report "
        "does; plain `optuna-dashboard` also counts confirmation runs (`confirms`) and copied "
        "trials (`copied_from`), so where there are some its chart can differ.",
    ]
    return "\n".join(lines)


#: Where optuna-dashboard (pinned <0.22 in pyproject.toml) keeps a study's note, the layout of
#: its optuna_dashboard._note: a version, and the text in pieces of at most NOTE_PIECE
#: characters under numbered keys. tests/views/test_dashboard.py reads a written note back with
#: optuna_dashboard.get_note.
NOTE_VERSION_KEY = "dashboard:note_ver"
NOTE_TEXT_PREFIX = "dashboard:note_str:"
NOTE_PIECE = 2045


def write_study_note(study: optuna.Study, spec: StudySpec) -> None:
    """Write the study note that optuna-dashboard shows, as its first version (call it when the
    study is created), and name the objective after the metric, so the dashboard's plots say
    ``loss`` rather than "Objective 0".

    Written here rather than by optuna_dashboard.save_note: importing optuna_dashboard loads
    its web app, and with it scikit-learn and SciPy, 1.1–1.5 s of every `tuner run`'s
    start-up on 2 cores (bench/overhead.py)."""
    note = study_note(spec)
    storage, study_id = internals.study_storage(study), internals.study_id(study)
    storage.set_study_system_attr(study_id, NOTE_VERSION_KEY, 1)
    for piece, start in enumerate(range(0, len(note), NOTE_PIECE)):
        storage.set_study_system_attr(
            study_id, f"{NOTE_TEXT_PREFIX}{piece}", note[start : start + NOTE_PIECE]
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([spec.metric])
