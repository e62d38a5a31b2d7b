"""Reading results back from storage: configurations ranked, best per optimizer type.

Shared by `best_config()`, the run summary and reports, so they agree on what "best" means.
A configuration is a COMPLETE trial of the study's own search (pruned trials never win on a
partial value; diverged trials, COMPLETE for the samplers' sake, never win at all; trials
copied in by a warm start were trained elsewhere). Where it was
confirmed on fresh seeds (tuner.study.confirmation), it is judged by the mean over those seeds:

1. confirmed configurations whose every confirmation run completed, by their mean;
2. configurations never confirmed, by their one value;
3. confirmed configurations that failed (diverged) on a fresh seed, by their mean.

The mean leaves out the search's own run: it won a contest among many trials, so its value
is biased by luck (the winner's curse); the fresh seeds' values are not.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.config import TrainingConfig
from tuner.errors import StudyNotFoundError
from tuner.storage.rdb import UNCOUNTED_KEYS, open_storage, resolve_storage_url
from tuner.storage.urls import mask_url, sqlite_file


def open_study(name: str, storage: str | None = None) -> tuple[optuna.Study, str]:
    """Load a study by name from `storage` (else TUNER_STORAGE, else the default file).

    Returns the study and the resolved storage URL. A missing study raises
    StudyNotFoundError listing those there are; a SQLite file that does not exist is not
    created (nor its folder), and an existing one is opened read-only: reading a study never
    writes, and a file the user cannot write can still be read.
    """
    url = resolve_storage_url(storage)
    path = sqlite_file(url)
    if path is not None and not path.exists():  # reading never creates a database
        raise StudyNotFoundError(
            f"no study named {name!r}: {path} does not exist (no study has been run there; "
            "run one with `tuner run`, or give the right --storage)"
        )
    opened = open_storage(url, read_only=True)
    try:
        return optuna.load_study(study_name=name, storage=opened), url
    except KeyError:
        names = sorted(optuna.get_all_study_names(opened))
        there = ", ".join(names) if names else "none yet (run `tuner run studies/quickstart.toml`)"
        raise StudyNotFoundError(
            f"no study named {name!r} in {mask_url(url)}; studies there: {there}"
        ) from None


#: User attribute of a confirmation run: the number of the search trial it re-trains.
CONFIRMS = "confirms"
#: User attribute of a trial a warm start copied from an earlier study: {"study", "trial"}.
COPIED_FROM = "copied_from"
#: User attribute of an earlier study's best configuration that a warm start queued first.
WARM_START = "warm_start"


def is_confirmation_run(user_attrs: Mapping[str, Any]) -> bool:
    """Whether a trial re-trains a configuration on a fresh seed to measure its final value
    (tuner.study.confirmation). The pruner never stops one: a pruned run would say nothing of the
    final value it is there to measure.

    An earlier study's best queued by a warm start is not one: it is a search trial, started
    where the earlier study did best and screened like any other against the rungs of the
    copied trials, when on this study's seeds it falls behind them (the winner's curse): left
    unpruned, the queued bests cost a warm study most of its epochs to target
    (bench/warm_start.py, docs/benchmarks.md)."""
    return CONFIRMS in user_attrs


def is_search_trial(trial: FrozenTrial) -> bool:
    """Whether this study's search trained the trial (not a confirmation run, not a copy):
    the trials that importances and search statistics should read."""
    return CONFIRMS not in trial.user_attrs and COPIED_FROM not in trial.user_attrs


#: The user attribute of a trial that diverged: the reason, with the epoch and the loss.
DIVERGED_ATTR = "diverged"
#: The user attribute of a trial that resumed from a checkpoint (tuner.execution.checkpointing):
#: ``{"trial": the trial that wrote it, "epoch": the epochs it had trained}``.
RESUMED_FROM_ATTR = "resumed_from"


def diverged(trial: FrozenTrial) -> str | None:
    """Why a trial diverged (``diverged in epoch 2: mean training loss ...``), or None.

    A diverged trial is recorded as COMPLETE with an infinite value and infeasible, so that
    samplers learn from it (see tuner.execution.worker._finish); this attribute is how views
    tell it from a result.
    """
    return trial.user_attrs.get(DIVERGED_ATTR)


def is_result(trial: FrozenTrial) -> bool:
    """Whether a trial finished training with a result: COMPLETE, finite, not diverged."""
    return (
        trial.state == TrialState.COMPLETE
        and not diverged(trial)
        and trial.value is not None
        and math.isfinite(trial.value)
    )


def trial_config(trial: FrozenTrial) -> TrainingConfig | None:
    """The configuration a trial trained with, or None for a trial that never sampled one."""
    data = trial.user_attrs.get("config")
    return TrainingConfig.from_dict(data) if data else None


def trial_optimizer(trial: FrozenTrial) -> str | None:
    """The optimizer type of a trial."""
    return trial.params.get("optimizer") or (trial.user_attrs.get("config") or {}).get("optimizer")


def direction_sign(direction: optuna.study.StudyDirection) -> float:
    """1 when the study minimises, −1 when it maximises: ``sign * value`` is smaller when better."""
    return 1.0 if direction == optuna.study.StudyDirection.MINIMIZE else -1.0


def count_states(trials: Iterable[FrozenTrial]) -> dict[TrialState, int]:
    """How many trials are in each state."""
    counts = dict.fromkeys(TrialState, 0)
    for trial in trials:
        counts[trial.state] += 1
    return counts


#: What became of trials, in words, in the order views say them: a diverged trial (stored as
#: COMPLETE and infeasible so that samplers learn from it) is counted as diverged, never as
#: complete.
OUTCOMES = ("running", "complete", "pruned", "diverged", "failed", "waiting")
#: The outcomes of finished trials: the columns of the summary and report tables.
FINISHED_OUTCOMES = ("complete", "pruned", "diverged", "failed")
#: The outcomes every count says, even at 0 (the others only when there are any).
ALWAYS_SAID = ("complete", "pruned", "failed")


def outcome(trial: FrozenTrial) -> str:
    """What became of a trial, in the words of OUTCOMES."""
    if diverged(trial):
        return "diverged"
    return "failed" if trial.state == TrialState.FAIL else trial.state.name.lower()


def count_outcomes(trials: Iterable[FrozenTrial]) -> dict[str, int]:
    """How many trials had each outcome (every one of OUTCOMES, zeros included)."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for trial in trials:
        counts[outcome(trial)] += 1
    return counts


def count_sentence(trials: Sequence[FrozenTrial]) -> str:
    """The trial count in words, as every view says it: "16 trials: 12 complete, 0 pruned,
    1 diverged, 3 failed" (complete, pruned and failed always; the others when any)."""
    counts = count_outcomes(trials)
    said = ", ".join(
        f"{counts[name]} {name}" for name in OUTCOMES if counts[name] or name in ALWAYS_SAID
    )
    return f"{len(trials)} trial{'' if len(trials) == 1 else 's'}: {said}"


def states_by_optimizer(
    trials: Iterable[FrozenTrial], best: Mapping[str, FrozenTrial]
) -> dict[str, dict[str, int]]:
    """How many search trials (`is_search_trial`) of each optimizer type had each outcome
    (OUTCOMES); the types in `best`'s order (best first), then those with no complete trial,
    by name."""
    counts: dict[str, dict[str, int]] = {}
    for trial in trials:
        name = trial_optimizer(trial)
        if name is not None and is_search_trial(trial):
            counts.setdefault(name, dict.fromkeys(OUTCOMES, 0))[outcome(trial)] += 1
    order = [*best, *sorted(set(counts) - set(best))]
    return {name: counts.get(name, dict.fromkeys(OUTCOMES, 0)) for name in order}


def best_trained_value(
    trials: Iterable[FrozenTrial], direction: optuna.study.StudyDirection
) -> float | None:
    """The best value a trial among `trials` reached in this study (`is_result`; Optuna's
    ``best_value`` would count trials a warm start copied from elsewhere), or None."""
    values = [
        float(trial.value)
        for trial in trials
        if is_result(trial) and COPIED_FROM not in trial.user_attrs
    ]
    if not values:
        return None
    return min(values) if direction_sign(direction) > 0 else max(values)


@dataclass(frozen=True)
class RankedConfig:
    """A search trial's configuration with what its confirmation runs reached.

    Attributes:
        trial: the COMPLETE search trial that found the configuration.
        seed_values: final values of its completed confirmation runs, one per fresh seed.
        failed_seeds: its confirmation runs that failed (diverged) instead.
    """

    trial: FrozenTrial
    seed_values: tuple[float, ...] = ()
    failed_seeds: int = 0

    @property
    def confirmed(self) -> bool:
        """Whether any confirmation run of it has finished."""
        return bool(self.seed_values) or self.failed_seeds > 0

    @property
    def seeds(self) -> int:
        """How many fresh seeds it was confirmed on (finished runs, failed ones included)."""
        return len(self.seed_values) + self.failed_seeds

    @property
    def mean(self) -> float:
        """The mean over its completed fresh seeds; the search trial's value if it has none."""
        return statistics.fmean(self.seed_values) if self.seed_values else float(self.trial.value)

    @property
    def spread(self) -> float | None:
        """The standard deviation over its fresh seeds (None below two)."""
        return statistics.stdev(self.seed_values) if len(self.seed_values) > 1 else None


def format_param(value: Any) -> str:
    """A user's parameter short: a float to 4 significant digits, anything else as it is."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def describe_seeds(mean: float | None, spread: float | None, seeds: int, failed: int) -> str:
    """How a configuration did when re-trained on fresh seeds (tuner.study.confirmation), e.g.
    ``0.9812 ± 0.0041 over 3 fresh seeds``, or that it never was."""
    if not seeds:
        return "not confirmed (one run on one seed)"
    parts = []
    if mean is not None:
        completed = seeds - failed
        spread_text = "" if spread is None else f" ± {spread:.2g}"
        parts.append(
            f"{mean:.5g}{spread_text} over {completed} fresh seed{'s' if completed != 1 else ''}"
        )
    if failed:
        parts.append(f"failed on {failed} of {seeds} fresh seeds")
    return ", ".join(parts)


def counts_as_seed(run: FrozenTrial, stale: set[int]) -> bool:
    """Whether a finished confirmation run says how its configuration does on a fresh seed:
    it completed or diverged, or it failed on its own, not because its worker died (`stale`:
    the trials that have a retry) or was stopped."""
    if run.state is TrialState.COMPLETE:  # a result, or diverged (see `diverged`)
        return True
    reason = str(run.user_attrs.get("fail_reason", ""))
    return (
        run.state is TrialState.FAIL
        and run.number not in stale
        and not reason.startswith("interrupted")
    )


def rank_configurations(
    trials: Sequence[FrozenTrial], direction: optuna.study.StudyDirection
) -> list[RankedConfig]:
    """Every configuration the search completed among a study's `trials`, best first (see the
    module's rule)."""
    runs: dict[int, list[FrozenTrial]] = {}
    for trial in trials:
        if CONFIRMS in trial.user_attrs and trial.state.is_finished():
            runs.setdefault(int(trial.user_attrs[CONFIRMS]), []).append(trial)
    # A run that never got to the end tells nothing about the configuration: one whose worker
    # died (it has a retry) or that was interrupted (a later run of the study queues it again).
    stale = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}
    ranked = []
    for trial in trials:
        if not is_result(trial) or not is_search_trial(trial):
            continue
        confirming = [run for run in runs.get(trial.number, []) if counts_as_seed(run, stale)]
        ranked.append(
            RankedConfig(
                trial,
                tuple(float(run.value) for run in confirming if is_result(run)),
                sum(not is_result(run) for run in confirming),
            )
        )
    sign = direction_sign(direction)

    def order(config: RankedConfig) -> tuple[int, float]:
        group = 1 if not config.confirmed else 2 if config.failed_seeds else 0
        return group, sign * config.mean

    return sorted(ranked, key=order)


def ranked_by_optimizer(
    trials: Sequence[FrozenTrial], direction: optuna.study.StudyDirection
) -> dict[str, RankedConfig]:
    """The best-ranked configuration of each optimizer type among a study's `trials`, best
    first."""
    best: dict[str, RankedConfig] = {}
    for config in rank_configurations(trials, direction):
        name = trial_optimizer(config.trial)
        if name is not None:
            best.setdefault(name, config)
    return best


def best_by_optimizer(ranked: dict[str, RankedConfig]) -> dict[str, FrozenTrial]:
    """The search trial of each optimizer type's best-ranked configuration (`ranked`, as
    `ranked_by_optimizer` gives it), best first."""
    return {name: config.trial for name, config in ranked.items()}


def outside_budget(trials: list[FrozenTrial]) -> int:
    """How many trials the budget does not count: retries of trials whose worker died,
    interrupted trials (each re-run by one that counts), warm-start copies and confirmation
    runs (see tuner.storage.rdb.UNCOUNTED_KEYS)."""
    return sum(any(key in trial.system_attrs for key in UNCOUNTED_KEYS) for trial in trials)
