"""What the terminal shows: live study progress and the tables of results (rich)."""

from __future__ import annotations

import math
import shutil
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tuner.config import TrainingConfig
from tuner.study.results import (
    CONFIRMS,
    COPIED_FROM,
    FINISHED_OUTCOMES,
    RESUMED_FROM_ATTR,
    RankedConfig,
    best_by_optimizer,
    best_trained_value,
    count_outcomes,
    count_sentence,
    count_states,
    describe_seeds,
    diverged,
    format_param,
    outside_budget,
    ranked_by_optimizer,
    states_by_optimizer,
    trial_config,
    trial_optimizer,
)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def describe_diverged(trial: optuna.trial.FrozenTrial) -> str:
    """A diverged trial in one line: its number, optimizer, epoch and loss."""
    return f"trial {trial.number} ({trial_optimizer(trial) or '—'}) {diverged(trial)}"


def print_diverged(console: Console, trials: list[optuna.trial.FrozenTrial], limit: int) -> None:
    """The diverged trials with their epoch and loss, the first `limit` of them."""
    lost = [trial for trial in trials if diverged(trial)]
    for trial in lost[:limit]:
        console.print(f"  {describe_diverged(trial)}", soft_wrap=True)
    if len(lost) > limit:
        console.print(f"  … and {len(lost) - limit} more diverged trials")


def format_value(value: float | None) -> str:
    """A metric value, short."""
    return "—" if value is None else f"{value:.5g}"


#: Divergences a run prints as they come; the rest are counted on its bar.
DIVERGED_SHOWN = 3


class StudyProgress:
    """A progress bar fed by polling the study in storage (workers may be anywhere)."""

    def __init__(self, console: Console, budget: int | None):
        self.console = console
        self.budget = budget
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "pruned {task.fields[pruned]} · diverged {task.fields[diverged]} · "
                "failed {task.fields[failed]}"
            ),
            TextColumn("· best [bold green]{task.fields[best]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.study: optuna.Study | None = None
        self.task = None
        self.started = time.monotonic()
        #: Diverged trials already seen: printed above the bar, or there before this run.
        self.announced: set[int] = set()
        self.shown = 0  # how many of them this run printed (DIVERGED_SHOWN at most)

    def __enter__(self) -> StudyProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.study is not None:
            self.tick()
        self.progress.__exit__(*exc)

    def start(self, study: optuna.Study, storage_url: str) -> None:
        """Begin showing `study` (called once it exists in storage)."""
        from tuner.storage.urls import mask_url

        self.console.print(
            f"Study [bold]{study.study_name}[/] in {escape(mask_url(storage_url))}", soft_wrap=True
        )
        self.study = study
        # A resumed study's old divergences are not news: the summary counts them.
        self.announced = {t.number for t in study.get_trials(deepcopy=False) if diverged(t)}
        self.task = self.progress.add_task(
            study.study_name, total=None, pruned=0, diverged=0, failed=0, best="—"
        )
        self.tick()

    def tick(self) -> None:
        """Refresh the bar from storage."""
        trials = self.study.get_trials(deepcopy=False)
        counts = count_states(trials)
        outcomes = count_outcomes(trials)
        for trial in trials:  # the first few divergences, with epoch and loss, above the bar
            if diverged(trial) and trial.number not in self.announced:
                self.announced.add(trial.number)
                self.shown += 1
                if self.shown <= DIVERGED_SHOWN:
                    line = describe_diverged(trial)
                elif self.shown == DIVERGED_SHOWN + 1:
                    line = (
                        "… further divergences are counted on the bar; "
                        f"{tuner_command()} status {self.study.study_name} lists them"
                    )
                else:
                    continue
                self.progress.console.print(line, soft_wrap=True)
        self.progress.update(
            self.task,
            # Slots are laid down as workers go: the total is the budget, plus any retries,
            # interrupted trials, warm-start copies and confirmation runs.
            total=self.budget + outside_budget(trials) if self.budget else None,
            completed=sum(counts[state] for state in FINISHED),
            pruned=outcomes["pruned"],
            diverged=outcomes["diverged"],
            failed=outcomes["failed"],
            best=format_value(best_trained_value(trials, self.study.direction)),
        )


def format_knob(value: float) -> str:
    """A knob short, but with the digits that tell values close to 1 apart: momentum and β's
    are searched as 1 − value on a log scale, so 0.99977 is not 0.9999 nor ``1``; such a
    value keeps two significant digits of 1 − value."""
    if 0.9 <= value < 1.0:
        return f"{value:.{max(3, math.floor(-math.log10(1.0 - value)) + 2)}g}"
    return f"{value:.3g}"


def describe_config(config: TrainingConfig | None) -> str:
    """A configuration on one line: lr, momentum, other knobs, schedule, clipping, batch,
    then the user's own parameters by their names."""
    if config is None:
        return ""
    parts = [f"lr={config.learning_rate:.3g}"]
    if config.momentum is not None:
        parts.append(f"momentum={format_knob(config.momentum)}")
    parts += [
        f"{key}={format_knob(value)}"
        for key, value in config.hyperparameters.items()
        if isinstance(value, float)
    ]
    if config.weight_decay:
        parts.append(f"wd={config.weight_decay:.2g}")
    parts.append(config.schedule)
    if config.max_grad_norm:
        parts.append(f"clip={config.max_grad_norm:.2g}")
    if config.batch_size:
        parts.append(f"batch={config.batch_size}")
    if config.lookahead:
        parts.append(f"lookahead(k={config.lookahead[0]}, α={config.lookahead[1]:.2g})")
    parts += [f"{name}={format_param(value)}" for name, value in config.params.items()]
    return ", ".join(parts)


def describe_ranked(config: RankedConfig) -> str:
    """`describe_seeds` for a ranked configuration."""
    return describe_seeds(
        config.mean if config.seed_values else None,
        config.spread,
        config.seeds,
        config.failed_seeds,
    )


def print_summary(console: Console, study: optuna.Study, storage_url: str) -> bool:
    """The best trial, the best trial of each optimizer type, and where the study lives;
    False (after saying so) when no trial completed: the study has nothing to report."""
    from tuner.storage.urls import mask_url

    metric = study.user_attrs.get("metric", "value")
    trials = study.get_trials(deepcopy=False)
    extra = _beyond_the_search(trials)
    console.print(
        f"\n[bold]{study.study_name}[/]: {count_sentence(trials)}"
        + (f" ({extra})" if extra else "")
    )
    ranked = ranked_by_optimizer(trials, study.direction)
    per_optimizer = best_by_optimizer(ranked)
    if not trials:
        console.print("[yellow]No trial ran[/]: the study has nothing to report.")
        return False
    if not per_optimizer:
        console.print("[yellow]No trial completed.[/] Reasons recorded on failed trials:")
        for trial in trials:
            if "fail_reason" in trial.user_attrs:
                console.print(f"  trial {trial.number}: {trial.user_attrs['fail_reason']}")
        return False
    name, winner = next(iter(ranked.items()))
    best = winner.trial
    console.print(
        f"Best: trial {best.number}, {metric} = [bold green]{format_value(best.value)}[/] with "
        f"[bold]{name}[/] ({describe_config(trial_config(best))}); {describe_ranked(winner)}"
    )
    # No vertical rules, and the three counts in one column: at 80 columns the configuration
    # keeps about half the width and wraps between its settings, never inside one.
    table = Table(
        title=f"Best trial per optimizer ({study.direction.name.lower()} {metric})",
        box=box.SIMPLE_HEAD,
    )
    for column in ("optimizer", f"best {metric}", "trial"):
        table.add_column(column, no_wrap=True)
    table.add_column("complete/\npruned/\ndiverged/\nfailed", justify="center", no_wrap=True)
    table.add_column("configuration", overflow="fold", ratio=1)
    confirmed = any(config.confirmed for config in ranked.values())
    if confirmed:
        table.add_column("fresh seeds", overflow="fold")
    for name, counts_of in states_by_optimizer(trials, per_optimizer).items():
        trial = per_optimizer.get(name)
        table.add_row(
            name,
            format_value(trial.value if trial else None),
            str(trial.number) if trial else "—",
            "/".join(str(counts_of[outcome]) for outcome in FINISHED_OUTCOMES),
            describe_config(trial_config(trial)) if trial else "",
            *([describe_ranked(ranked[name]) if trial else ""] if confirmed else []),
        )
    console.print(table)
    # soft_wrap: a path or URL broken over two lines cannot be copied.
    option = storage_option(storage_url)
    tuner = tuner_command()
    lost = count_outcomes(trials)["diverged"]
    if lost:  # listed as they came, and by `tuner status`: here only counted
        console.print(
            f"{lost} {'trial' if lost == 1 else 'trials'} diverged (the sampler learns to avoid "
            f"them): {escape(f'{tuner} status {study.study_name}{option}')} lists them",
            soft_wrap=True,
        )
    console.print(
        f"Study [bold]{study.study_name}[/] lives in {escape(mask_url(storage_url))}\n"
        f"  best configuration: {escape(f'{tuner} best {study.study_name}{option}')}\n"
        f"  dashboard: {escape(f'{tuner} dashboard{option}')}",
        soft_wrap=True,
    )
    return True


def tuner_command() -> str:
    """How to call tuner from the user's shell, for the commands the output suggests: ``tuner``
    where PATH finds this installation's script, else the script's path (a virtual
    environment that is not activated: ``.venv/bin/tuner``), which works when pasted."""
    script = Path(sys.executable).parent / "tuner"
    found = shutil.which("tuner")
    if not script.exists() or (found and Path(found).resolve() == script.resolve()):
        return "tuner"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:  # not under the working folder
        return str(script)


def _beyond_the_search(trials: list[optuna.trial.FrozenTrial]) -> str:
    """What the study holds besides its search's trials: ``12 copied by a warm start, 9
    confirmation runs``, or ``""``."""
    copied = sum(COPIED_FROM in trial.user_attrs for trial in trials)
    confirming = sum(CONFIRMS in trial.user_attrs for trial in trials)
    parts = [f"{copied} copied by a warm start"] if copied else []
    parts += [f"{confirming} confirmation runs"] if confirming else []
    return ", ".join(parts)


def storage_option(storage_url: str) -> str:
    """`` --storage URL`` (password masked) for a command to find the study, or ``""`` where
    a bare command opens that database anyway ($TUNER_STORAGE, else the default file)."""
    import shlex

    from tuner.storage.rdb import resolve_storage_url
    from tuner.storage.urls import mask_url

    if storage_url == resolve_storage_url():
        return ""
    return f" --storage {shlex.quote(mask_url(storage_url))}"


def print_status(console: Console, study: optuna.Study) -> None:
    """Trials by state, running trials with their worker and age, best value, throughput."""
    import datetime

    trials = study.get_trials(deepcopy=False)
    metric = study.user_attrs.get("metric", "value")
    best = best_trained_value(trials, study.direction)
    console.print(f"[bold]{study.study_name}[/]: {count_sentence(trials)}")
    print_diverged(console, trials, limit=5)
    console.print(
        f"best {metric}: [bold green]{format_value(best)}[/] ({study.direction.name.lower()})"
    )

    now = datetime.datetime.now()
    finished = [t for t in trials if t.datetime_complete is not None]
    started = [t.datetime_start for t in finished if t.datetime_start is not None]
    if finished and started:
        # Over the wall time the finished trials took, from the first start to the last end:
        # trials that ended together are no burst of speed (their ends are not their pace).
        last = max(t.datetime_complete for t in finished)
        span = (last - min(started)).total_seconds()
        recent = sum(1 for t in finished if (now - t.datetime_complete).total_seconds() <= 60)
        rate = f"{len(finished) / span:.3g} trials/s" if span > 0 else "—"
        console.print(
            f"throughput: {rate} ({len(finished)} finished in {span:.0f} s), "
            f"{recent} in the last minute"
        )
    retried = {
        trial.number: optuna.storages.RetryFailedTrialCallback.retried_trial_number(trial)
        for trial in trials
    }
    retried = {number: of for number, of in retried.items() if of is not None}
    if retried:  # trials whose worker died, re-run with the same parameters (beyond budget)
        console.print(
            f"retries: {len(retried)} ("
            + ", ".join(f"trial {number} retries trial {of}" for number, of in retried.items())
            + ")"
        )

    resumed = {t.number: t.user_attrs.get(RESUMED_FROM_ATTR) for t in trials}
    resumed = {number: at for number, at in resumed.items() if at is not None}
    if resumed:  # re-runs that continued from a checkpoint instead of epoch 1
        console.print(
            f"resumed from checkpoints: {len(resumed)} ("
            + ", ".join(
                f"trial {number} from trial {at['trial']} after epoch {at['epoch']}"
                for number, at in resumed.items()
            )
            + ")"
        )

    running = [t for t in trials if t.state == TrialState.RUNNING]
    if running:
        table = Table(title="Running trials")
        for column in ("trial", "optimizer", "worker", "node", "age", "last epoch"):
            table.add_column(column)
        for trial in running:
            worker = str(trial.user_attrs.get("worker", "—"))
            age = (now - trial.datetime_start).total_seconds() if trial.datetime_start else 0.0
            table.add_row(
                str(trial.number),
                str(trial_optimizer(trial) or "—"),
                worker,
                str(trial.user_attrs.get("node", "—")),
                f"{age:.0f} s",
                str(max(trial.intermediate_values, default="—")),
            )
        console.print(table)
