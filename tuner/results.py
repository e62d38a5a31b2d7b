"""Reading results back from storage: best trials overall and per optimizer type.

Shared by `best_config()`, the run summary and reports, so they agree on what "best" means:
the best COMPLETE trial in the study's direction (pruned trials never win on a partial value).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.config import TrainingConfig
from tuner.errors import StudyNotFoundError
from tuner.storage import open_storage, resolve_storage_url
from tuner.storage_urls import mask_url, sqlite_file


def open_study(name: str, storage: str | None = None) -> tuple[optuna.Study, str]:
    """Load a study by name from `storage` (else TUNER_STORAGE, else the default file).

    Returns the study and the resolved storage URL. A missing study raises
    StudyNotFoundError listing those there are; a SQLite file that does not exist is not
    created (nor its folder): reading a study never writes.
    """
    url = resolve_storage_url(storage)
    path = sqlite_file(url)
    if path is not None and not path.exists():  # reading never creates a database
        raise StudyNotFoundError(
            f"no study named {name!r}: {path} does not exist (no study has been run there; "
            "run one with `tuner run`, or give the right --storage)"
        )
    opened = open_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=opened), url
    except KeyError:
        names = sorted(optuna.get_all_study_names(opened))
        there = ", ".join(names) if names else "none yet (run `tuner run studies/quickstart.toml`)"
        raise StudyNotFoundError(
            f"no study named {name!r} in {mask_url(url)}; studies there: {there}"
        ) from None


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


def best_trials_by_optimizer(study: optuna.Study) -> dict[str, FrozenTrial]:
    """The best COMPLETE trial of each optimizer type, best first."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return best_by_optimizer(complete, study.direction)


def best_by_optimizer(
    trials: Iterable[FrozenTrial], direction: optuna.study.StudyDirection
) -> dict[str, FrozenTrial]:
    """The best COMPLETE trial of each optimizer type among `trials`, best first."""
    sign = direction_sign(direction)
    best: dict[str, FrozenTrial] = {}
    for trial in trials:
        name = trial_optimizer(trial)
        if trial.state != TrialState.COMPLETE or name is None:
            continue
        if name not in best or sign * trial.value < sign * best[name].value:
            best[name] = trial
    return dict(sorted(best.items(), key=lambda item: sign * item[1].value))


def count_states(trials: Iterable[FrozenTrial]) -> dict[TrialState, int]:
    """How many trials are in each state."""
    counts = dict.fromkeys(TrialState, 0)
    for trial in trials:
        counts[trial.state] += 1
    return counts


def count_sentence(trials: Sequence[FrozenTrial]) -> str:
    """The trial count in words, as every view says it: "16 trials: 12 complete, 0 pruned,
    4 failed" (the finished states always; running and waiting trials when there are any)."""
    counts = count_states(trials)
    always = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    states = ", ".join(
        f"{counts[state]} {STATE_WORDS[state]}"
        for state in TrialState
        if counts[state] or state in always
    )
    return f"{len(trials)} trial{'' if len(trials) == 1 else 's'}: {states}"


#: Each trial state in words.
STATE_WORDS = {
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
}


def states_by_optimizer(
    trials: Iterable[FrozenTrial], best: Mapping[str, FrozenTrial]
) -> dict[str, dict[TrialState, int]]:
    """How many trials of each optimizer type are in each state; the types in `best`'s order
    (best first), then those with no complete trial, by name."""
    counts: dict[str, dict[TrialState, int]] = {}
    for trial in trials:
        name = trial_optimizer(trial)
        if name is not None:
            counts.setdefault(name, dict.fromkeys(TrialState, 0))[trial.state] += 1
    order = [*best, *sorted(set(counts) - set(best))]
    return {name: counts.get(name, dict.fromkeys(TrialState, 0)) for name in order}
