"""Confirmation on fresh seeds: after the search, re-train its best configurations.

A search's best trial won among many, each trained on one seed; on small data a lucky seed
wins. With ``[budget] confirm = { top = 3, seeds = 3 }`` (or ``tuner run --confirm 3x3``),
once the search's workers are done, `tuner run` queues ``seeds`` runs of each of the ``top``
configurations (ranked as tuner.study.results ranks them) and the same workers train them. Each run
is an ordinary trial, so the dashboard and the ``optuna`` CLI read the study as it is:

- its parameters are the search trial's, fixed as Optuna's ``enqueue_trial`` fixes them (the
  system attribute ``fixed_params``), so the sampler proposes nothing for it;
- it trains on a fresh seed: a trial's seed follows from its number
(tuner.execution.train.trial_seed);
- its user attribute ``confirms`` holds the search trial's number, which is how
  tuner.study.results groups the runs and ranks by their mean;
- it is outside the trial budget (tuner.storage.rdb.OUTSIDE_BUDGET_KEY), and the pruner never
  stops it (tuner.execution.train.close_epoch): a pruned run would say nothing of its final value.

The runs come after the search, so the search's sampler never learns from them;
tuner.study.results.is_search_trial leaves them out of importances and search statistics.
Queueing tops up: a configuration that already has some finished runs gets only the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from tuner.spec import StudySpec
from tuner.storage.rdb import OUTSIDE_BUDGET_KEY
from tuner.study.results import CONFIRMS, counts_as_seed, rank_configurations


@dataclass(frozen=True)
class Queued:
    """What `queue_runs` queued.

    Attributes:
        trials: the search trials whose configurations are being confirmed, best first.
        runs: how many runs it queued now (0: every configuration has all its seeds).
        asked: how many configurations ``[budget] confirm`` asked for.
    """

    trials: tuple[int, ...]
    runs: int
    asked: int

    def describe(self, seeds: int) -> str:
        """One line for the terminal."""
        if not self.trials:
            return "Nothing to confirm: no trial of the search completed"
        which = ", ".join(str(number) for number in self.trials)
        line = (
            f"Confirming the top {len(self.trials)} configurations (trials {which}) on {seeds} "
            f"fresh seeds each: {self.runs} runs queued"
        )
        if len(self.trials) < self.asked:
            line += (
                f" (confirm asked for {self.asked}, but only {len(self.trials)} "
                f"trial{'s' if len(self.trials) != 1 else ''} completed)"
            )
        return line


def queue_runs(study: optuna.Study, spec: StudySpec) -> Queued:
    """Queue the confirmation runs the study still lacks, as WAITING trials for the workers.

    Raises:
        ValueError: the spec asks for no confirmation.
    """
    confirm = spec.budget.confirm
    if confirm is None:
        raise ValueError(f"study {spec.name!r} asks for no confirmation ([budget] confirm)")
    trials = study.get_trials(deepcopy=False)
    top = rank_configurations(trials, study.direction)[: confirm.top]
    stale = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}
    queued = 0
    for config in top:
        number = config.trial.number
        runs = [t for t in trials if t.user_attrs.get(CONFIRMS) == number]
        # Runs still to come count as well as those that told something.
        have = sum(not t.state.is_finished() or counts_as_seed(t, stale) for t in runs)
        for _ in range(confirm.seeds - have):
            study.add_trial(
                optuna.trial.create_trial(
                    state=TrialState.WAITING,
                    system_attrs={"fixed_params": config.trial.params, OUTSIDE_BUDGET_KEY: True},
                    user_attrs={CONFIRMS: number},
                )
            )
            queued += 1
    return Queued(tuple(config.trial.number for config in top), queued, confirm.top)
