"""Warm starts: seed a new study with what earlier studies in the same database learned.

``[search] warm_start = ["study-a"]`` (or ``tuner run --warm-start study-a``) works once,
when the study is created:

1. Each earlier study's `BEST_QUEUED` best configurations that this study's space can
   sample, ranked as tuner.study.results ranks them (mean over fresh seeds where confirmed), are
   queued before anything else, as Optuna's ``enqueue_trial`` queues them: the new study's
   first trials re-train them here, on this study's seeds and within its budget, and the
   pruner screens them as search trials, against the copied trials' rungs (see
   tuner.study.results.is_confirmation_run). A better one this space cannot sample (an optimizer
   it does not search, a value outside a range) is named and passed over.
2. Each earlier study's finished search trials (COMPLETE and PRUNED) whose parameters this
   study's space samples with the very same distributions are copied in (Optuna's
   ``create_trial`` and ``add_trials``) with their values and per-epoch values, so that the
   sampler and the pruner learn from them at once. A trial sampled from another range would
   be misread as a draw from this one, so such trials are counted and the first difference
   named instead. Copies carry the user attribute ``copied_from``, stay outside the trial
   budget (tuner.storage.rdb.OUTSIDE_BUDGET_KEY) and never win: they were trained elsewhere.

Before the study exists, every earlier study is checked: it is in the database, was made by
``tuner run``, and trains the same workload for the same metric in the same direction.
What came from where is printed, and kept in the study's user attribute ``warm_start``.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import SpecError, StudyNotFoundError
from tuner.search.space import sample_config
from tuner.spec import StudySpec
from tuner.storage import optuna_internals as internals
from tuner.storage.rdb import OUTSIDE_BUDGET_KEY
from tuner.storage.urls import mask_url
from tuner.study.results import (
    COPIED_FROM,
    WARM_START,
    is_search_trial,
    rank_configurations,
    trial_config,
)

#: Best configurations queued from each earlier study. The top few, not each optimizer's
#: best: on the digits CNN (bench/warm_start.py) the best of the weaker optimizer types,
#: re-trained in full, spent about 45 epochs a study before the search proper began, while
#: the copied trials already teach the sampler where every optimizer type stands.
BEST_QUEUED = 3


@dataclass(frozen=True)
class Source:
    """An earlier study, checked, with the settings its trials were trained under."""

    study: optuna.Study
    epochs: int


@dataclass
class Transfer:
    """What one earlier study gave the new one."""

    study: str
    queued: list[int] = field(default_factory=list)
    copied: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for the terminal and the study's record."""
        best = ", ".join(str(number) for number in self.queued) or "none"
        line = (
            f"Warm start from {self.study}: best configurations of trials {best} queued first; "
            f"{self.copied} finished trials copied"
        )
        if self.skipped:
            line += f"; {self.skipped} left out ({'; '.join(self.reasons)})"
        return line


def _workload_text(workload: dict[str, Any]) -> str:
    """A recorded ``[workload]`` as the user wrote it: its name (or command) and options;
    where the study file was (``search_path``) is no part of what it trains."""
    what = workload.get("name") or " ".join(workload.get("command") or [])
    options = workload.get("options") or {}
    return what + (f" {options}" if options else "")


def check_sources(spec: StudySpec, storage: optuna.storages.BaseStorage, url: str) -> list[Source]:
    """The spec's warm-start studies, each checked before the new study is created.

    Raises:
        StudyNotFoundError: an earlier study is not in the database (the message lists those
            that are).
        SpecError: an earlier study was not made by ``tuner run``, or trains another workload,
            metric or direction (the message names both).
    """
    if not spec.search.warm_start:
        return []
    sources = []
    for name in spec.search.warm_start:
        try:  # by name: what else the shared database holds is not read
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            there = ", ".join(sorted(optuna.get_all_study_names(storage))) or "none"
            raise StudyNotFoundError(
                f"[search] warm_start: no study named {name!r} in {mask_url(url)}; studies "
                f"there: {there}"
            ) from None
        recorded = study.user_attrs.get("spec")
        if recorded is None:
            raise SpecError(
                f"[search] warm_start: study {name!r} was not created by `tuner run`: it records "
                "no workload to compare with"
            )
        theirs = (
            _workload_text(recorded["workload"]),
            study.user_attrs.get("metric"),
            study.direction.name.lower(),
        )
        ours = (_workload_text(spec.to_dict()["workload"]), spec.metric, spec.direction)
        if theirs != ours:
            raise SpecError(
                f"[search] warm_start: study {name!r} trains {theirs[0]} for {theirs[1]} "
                f"({theirs[2]}), but {spec.name!r} trains {ours[0]} for {ours[1]} ({ours[2]}); "
                "warm-start only from studies of the same workload and metric"
            )
        sources.append(Source(study, int(recorded["budget"]["epochs"])))
    return sources


def _short(distribution: BaseDistribution) -> str:
    """A distribution as a user reads it: ``[1e-05, 0.01] log`` or ``one of [...]``."""
    if isinstance(distribution, CategoricalDistribution):
        return f"one of {list(distribution.choices)}"
    scale = " log" if getattr(distribution, "log", False) else ""
    return f"[{distribution.low:g}, {distribution.high:g}]{scale}"


def _contains(distribution: BaseDistribution, value: Any) -> bool:
    """Whether `value` lies in `distribution` (Optuna's own test, ``_contains``, is private)."""
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    return distribution.low <= value <= distribution.high


def misfit(trial: FrozenTrial, spec: StudySpec, *, exact: bool) -> str | None:
    """Why the spec's space would not sample `trial`'s parameters, or None when it would.

    The space is asked which distributions it draws this configuration's parameters from
    (by sampling it with Optuna's FixedTrial). With `exact`, each must be the very
    distribution the trial was drawn from (a copied trial is read as a draw from this
    space); without, each value need only lie inside it (a configuration to re-train).
    """
    fixed = optuna.trial.FixedTrial(trial.params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FixedTrial warns of values out of range: judged below
        try:
            here_config = sample_config(fixed, spec)  # type: ignore[arg-type]
        except ValueError as error:  # a parameter this space needs, or an unknown choice
            return str(error).split(". Please")[0]
    there_config = trial_config(trial)
    # The user's parameters that this study does not declare are asked for by its code while
    # it trains (trial.suggest_*): nothing here says their distribution, and Optuna checks a
    # queued value against it when the code asks.
    asked = set(there_config.params if there_config else ()) - set(spec.declared_params())
    extra = sorted(set(trial.params) - set(fixed.distributions) - asked)
    if extra:
        return f"{extra[0]} is not searched here"
    # A knob sampled as its position in the optimizer's range (tuner.search.space) has the same
    # distribution in both studies even where the range differs: the configuration decides.
    if there_config is not None:
        for name in ("learning_rate", "momentum", "weight_decay"):
            there, here = getattr(there_config, name), getattr(here_config, name)
            if there != here and not (there and here and math.isclose(there, here)):
                return f"{name} {there} there would be {here} here (its range differs)"
        for name, there in there_config.hyperparameters.items():
            here = here_config.hyperparameters.get(name)
            if isinstance(there, float) and not (here and math.isclose(there, here)):
                return f"{name} {there} there would be {here} here (its range differs)"
    for name, here in fixed.distributions.items():
        there = trial.distributions[name]
        if exact and here != there:
            return f"{name} is {_short(there)} there, {_short(here)} here"
        if not exact and not _contains(here, trial.params[name]):
            return f"{name} = {trial.params[name]} is outside {_short(here)} here"
    return None


def _learned_from(system_attrs: dict[str, Any]) -> dict[str, Any]:
    """The system attributes samplers and pruners read, copied with a trial: the constraint
    values of constrained sampling, and the successive-halving rungs it reached (not tuner's
    or Optuna's bookkeeping, nor artifacts, which belong to the earlier study)."""
    return {
        key: value
        for key, value in system_attrs.items()
        if internals.is_constraint_attr(key) or key.startswith("completed_rung_")
    }


def _copy(trial: FrozenTrial, source: str) -> FrozenTrial:
    return optuna.trial.create_trial(
        state=trial.state,
        value=trial.value,
        params=trial.params,
        distributions=trial.distributions,
        user_attrs={**trial.user_attrs, COPIED_FROM: {"study": source, "trial": trial.number}},
        system_attrs={**_learned_from(trial.system_attrs), OUTSIDE_BUDGET_KEY: True},
        intermediate_values=trial.intermediate_values,
    )


def _queue_best(
    study: optuna.Study, spec: StudySpec, source: Source, transfer: Transfer, seen: set[str]
) -> None:
    """Queue the source's `BEST_QUEUED` best configurations that this space takes and that
    no other source queued (`seen`), while the trial budget has room."""
    ranked = rank_configurations(source.study.get_trials(deepcopy=False), source.study.direction)
    for config in ranked:
        if len(transfer.queued) == BEST_QUEUED:
            break
        reason = misfit(config.trial, spec, exact=False)
        if reason is not None:
            transfer.reasons.append(f"best trial {config.trial.number}: {reason}")
            continue
        key = json.dumps(config.trial.params, sort_keys=True)
        if key in seen:
            continue
        if spec.budget.trials is not None and len(seen) >= spec.budget.trials:
            transfer.reasons.append(f"best trial {config.trial.number}: no room in the budget")
            continue
        seen.add(key)
        origin = {"study": source.study.study_name, "trial": config.trial.number}
        study.enqueue_trial(config.trial.params, {WARM_START: origin})
        transfer.queued.append(config.trial.number)


def _copy_trials(study: optuna.Study, spec: StudySpec, source: Source, transfer: Transfer) -> None:
    """Copy the source's finished search trials that this space samples alike."""
    finished = [
        trial
        for trial in source.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)
        )
        if is_search_trial(trial)
    ]
    if source.epochs != spec.budget.epochs:
        transfer.skipped += len(finished)
        transfer.reasons.append(
            f"trials trained {source.epochs} epochs there, {spec.budget.epochs} here"
        )
        return
    copies, first_reason = [], None
    for trial in finished:
        reason = misfit(trial, spec, exact=True)
        if reason is None:
            copies.append(_copy(trial, source.study.study_name))
        else:
            transfer.skipped += 1
            first_reason = first_reason or f"e.g. trial {trial.number}: {reason}"
    if first_reason:
        transfer.reasons.append(first_reason)
    study.add_trials(copies)
    transfer.copied = len(copies)


def seed(study: optuna.Study, spec: StudySpec, sources: list[Source]) -> list[Transfer]:
    """Seed a newly created study from its checked sources (see the module's rules), and
    record what came from where in its user attribute ``warm_start``."""
    transfers = [Transfer(source.study.study_name) for source in sources]
    seen: set[str] = set()
    for source, transfer in zip(sources, transfers, strict=True):  # the trials to train first
        _queue_best(study, spec, source, transfer, seen)
    for source, transfer in zip(sources, transfers, strict=True):
        _copy_trials(study, spec, source, transfer)
    study.set_user_attr(
        WARM_START,
        {
            transfer.study: {
                "queued": transfer.queued,
                "copied": transfer.copied,
                "left_out": transfer.skipped,
                "why": transfer.reasons,
            }
            for transfer in transfers
        },
    )
    return transfers
