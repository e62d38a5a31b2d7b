"""Compute to target: how many training epochs each search strategy spends until some trial
first reaches a target validation metric.

For each workload, strategy and seed, one study runs with one worker (tuner's own worker loop,
in this process, no Ray): trials in order, epochs counted in trial order, pruned and diverged
trials included (a diverged trial's last epoch counts: it was spent). The study stops
claiming trials once one has reached the target; a study that never does spends its whole
budget and counts as a miss ("never"). Medians are over seeds with misses counted as never,
so a strategy missing in half its seeds or more has no finite median.

Strategies: the default (the spec's default sampler and pruner), random search and TPE without
pruning, each other sampler with the default pruner, and the variants the default was chosen
against (TPE with Hyperband, TPE with 5 or 10 start-up trials). The goal (issue 11): the default
reaches the target with at least 3x less compute than random search without pruning, at a hit
rate no lower.

    python bench/search_efficiency.py [--workloads digits mnist_5k] [--seeds 8] [--trials 40]
        [--epochs 15] [--strategies default random-no-pruning ...] [--jobs 2]
        [--target digits=0.9861] [--json results.json]

A target above 1 is never reached: every study trains its whole budget, and the JSON's traces
give the epochs to any target afterwards.

The full run is hours of CPU on two cores; fewer seeds, trials or strategies give a reduced
run with the same meaning.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

#: The optimizers searched: six families at their default ranges (tuner.search.optimizers).
OPTIMIZERS = ["sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"]
#: Strategy → the study file's ``[sampler]`` and ``[pruner]`` tables ({}: the defaults). The
#: last three are the variants the default was chosen against (docs/benchmarks.md).
STRATEGIES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "default": ({}, {}),
    "random-no-pruning": ({"name": "random"}, {"name": "none"}),
    "tpe-no-pruning": ({"name": "tpe"}, {"name": "none"}),
    "random": ({"name": "random"}, {}),
    "cmaes": ({"name": "cmaes"}, {}),
    "gp": ({"name": "gp"}, {}),
    "qmc": ({"name": "qmc"}, {}),
    "tpe-hyperband": ({"n_startup_trials": 10}, {"name": "hyperband"}),
    "tpe-startup-5": ({"n_startup_trials": 5}, {}),
    "tpe-startup-10": ({"n_startup_trials": 10}, {}),
}
#: Validation-accuracy targets that random search without pruning reaches in about half its
#: seeds at the default budget (measured; see docs/benchmarks.md).
TARGETS = {"digits": 0.9861, "mnist_5k": 0.975}
BASELINE = "random-no-pruning"


class Run(NamedTuple):
    """One study: where it hit the target (epochs spent until then) and what it spent."""

    workload: str
    strategy: str
    seed: int
    epochs_to_target: float  # inf: never
    epochs_spent: int
    trials: int
    diverged: int
    seconds: float
    #: [epochs spent, best value so far] at each improvement: compute to any other target,
    #: read off one run (a target above 1 runs the whole budget for that purpose).
    trace: list[tuple[int, float]]
    #: Each trial in order: its parameters, state and per-epoch values, to study the runs
    #: afterwards (which configurations reached the target, and when).
    trials_detail: list[dict[str, Any]]


def make_spec(dataset: str, strategy: str, seed: int, trials: int, epochs: int) -> Any:
    from tuner.spec import parse_spec

    sampler, pruner = STRATEGIES[strategy]
    data: dict[str, Any] = {
        "name": f"{dataset}-{strategy}-{seed}",
        "seed": seed,
        "metric": "val_accuracy",
        "workload": {"name": "cnn", "options": {"dataset": dataset}},
        "search": {"optimizers": OPTIMIZERS},
        "budget": {"trials": trials, "epochs": epochs},
        "sampler": sampler,
        "pruner": pruner,
    }
    return parse_spec(data)


def epochs_spent(trial: Any) -> int:
    """Epochs a finished trial trained, its diverging epoch included."""
    return int(trial.user_attrs.get("epochs_run", 0)) + bool(trial.user_attrs.get("diverged"))


def compute_to_target(trials: list[Any], target: float) -> float:
    """Epochs spent in trial order until some trial first reports `target` or better."""
    spent = 0
    for trial in sorted(trials, key=lambda t: t.number):
        for epoch, value in sorted(trial.intermediate_values.items()):
            if value >= target:
                return float(spent + epoch)
        spent += epochs_spent(trial)
    return math.inf


def best_so_far(trials: list[Any]) -> list[tuple[int, float]]:
    """[epochs spent, best value] at each improvement, epochs counted in trial order."""
    spent, best, trace = 0, -math.inf, []
    for trial in sorted(trials, key=lambda t: t.number):
        for epoch, value in sorted(trial.intermediate_values.items()):
            if value > best:
                best = value
                trace.append((spent + epoch, value))
        spent += epochs_spent(trial)
    return trace


def run_one(job: tuple[str, str, int, int, int, float]) -> Run:
    """One study, in a fresh SQLite file, one worker with one thread."""
    import optuna

    from tuner.execution.worker import run_worker
    from tuner.storage.rdb import open_storage
    from tuner.study import lifecycle as studies

    dataset, strategy, seed, trials, epochs, target = job
    spec = make_spec(dataset, strategy, seed, trials, epochs)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/bench.db"
        studies.create_or_resume(spec, open_storage(url))
        started = time.monotonic()

        def reached(study: optuna.Study) -> bool:
            return math.isfinite(compute_to_target(study.get_trials(deepcopy=False), target))

        run_worker(spec, url, threads=1, stop=reached)
        seconds = time.monotonic() - started
        done = optuna.load_study(study_name=spec.name, storage=url).get_trials(deepcopy=False)
    return Run(
        dataset,
        strategy,
        seed,
        compute_to_target(done, target),
        sum(epochs_spent(t) for t in done),
        len(done),
        sum(bool(t.user_attrs.get("diverged")) for t in done),
        round(seconds, 1),
        best_so_far(done),
        [
            {
                "number": t.number,
                "params": t.params,
                "state": t.state.name,
                "diverged": bool(t.user_attrs.get("diverged")),
                "values": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
            }
            for t in sorted(done, key=lambda t: t.number)
        ],
    )


def summarise(runs: list[Run], targets: dict[str, float]) -> str:
    """The table: per workload and strategy, median epochs to target, hits, ratio to random."""
    lines = [
        "| workload (target) | strategy | median epochs to target | hits | "
        "x less than random without pruning | diverged trials | epochs spent |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for workload in dict.fromkeys(run.workload for run in runs):
        mine = [run for run in runs if run.workload == workload]
        medians: dict[str, float] = {}
        for strategy in dict.fromkeys(run.strategy for run in mine):
            ours = [run for run in mine if run.strategy == strategy]
            # Misses are inf: the median is inf (never) when half or more missed.
            medians[strategy] = statistics.median(run.epochs_to_target for run in ours)
        for strategy, value in medians.items():
            ours = [run for run in mine if run.strategy == strategy]
            hits = sum(math.isfinite(run.epochs_to_target) for run in ours)
            base = medians.get(BASELINE, math.inf)
            ratio = base / value if math.isfinite(base) and math.isfinite(value) else math.nan
            lines.append(
                f"| {workload} ({targets[workload]:.2%}) | {strategy} | "
                f"{'never' if math.isinf(value) else f'{value:g}'} | {hits}/{len(ours)} | "
                f"{'—' if math.isnan(ratio) else f'{ratio:.2f}x'} | "
                f"{sum(run.diverged for run in ours)} of {sum(run.trials for run in ours)} | "
                f"{statistics.median(run.epochs_spent for run in ours):g} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--seeds", type=int, default=8, help="seeds per strategy (>= 8 in full)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=40, help="trial budget per study")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per trial")
    parser.add_argument(
        "--target", action="append", default=[], help="WORKLOAD=ACCURACY, e.g. digits=0.9889"
    )
    parser.add_argument("--jobs", type=int, default=1, help="studies run at once (processes)")
    parser.add_argument("--json", type=Path, help="also write every run here")
    args = parser.parse_args()
    targets = dict(TARGETS)
    for item in args.target:
        name, _, value = item.partition("=")
        targets[name] = float(value)

    jobs = [
        (workload, strategy, seed, args.trials, args.epochs, targets[workload])
        for workload in args.workloads
        for seed in range(args.first_seed, args.first_seed + args.seeds)
        for strategy in args.strategies
    ]
    runs: list[Run] = []
    with multiprocessing.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
        for run in pool.imap_unordered(run_one, jobs):
            runs.append(run)
            summary = {**run._asdict(), "trace": run.trace[-1:]}
            del summary["trials_detail"]
            print(json.dumps(summary), flush=True)
    order = {strategy: index for index, strategy in enumerate(STRATEGIES)}
    runs.sort(key=lambda run: (args.workloads.index(run.workload), order[run.strategy], run.seed))
    if args.json:
        args.json.write_text(json.dumps([run._asdict() for run in runs], indent=1))
    print(
        f"\n{args.seeds} seeds, {args.trials} trials x {args.epochs} epochs, one worker, "
        f"optimizers {', '.join(OPTIMIZERS)} at default ranges\n"
    )
    print(summarise(runs, targets))


if __name__ == "__main__":
    main()
