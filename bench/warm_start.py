"""Compute to target, cold vs warm-started: does a second study on the same workload, seeded
from the first (``[search] warm_start``), reach the target with less training?

For each seed: study A runs the default strategy (TPE + successive halving) from nothing; study B,
with another seed, is warm-started from A and runs the same budget. Compute is counted as
the issue's benchmark counts it: epochs trained, in trial order with one worker (pruned and
diverged trials included; trials copied in by the warm start were trained by A, so they cost
B nothing), until some trial first reaches the target validation metric; a study that never
does counts as a miss. Both studies of a seed run in this one process, one after the other.

    nice -n 10 python bench/warm_start.py [--seeds 5] [--trials 40] [--epochs 15]
        [--target 0.9777 --target 0.9833] [--confirm 3x3] [--storage URL]

With --confirm, the first study's winners are then re-trained on fresh seeds (``[budget]
confirm``) and a third study, seeded like the second, starts from them ranked by their mean:
the two warm starts are compared from the same first study. The confirmation runs come after
the first study's search and do not change its epochs to target.

The default workload is SimpleCNN on scikit-learn's 8×8 digits (359 validation images, so
a target of 0.9833 takes 354 right: 353/359 = 98.329% falls short of it under ``>=``), six
optimizers at their default ranges: the setting of ANCHORS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import optuna

OPTIMIZERS = ["sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"]


def bench_spec(
    name: str, seed: int, trials: int, epochs: int, warm: list[str], confirm: str | None = None
) -> Any:
    """The study both runs train: only its name, seed, warm start and confirmation differ."""
    from tuner.spec import parse_spec

    budget: dict[str, Any] = {"trials": trials, "epochs": epochs}
    if confirm:
        top, seeds = confirm.split("x")
        budget["confirm"] = {"top": int(top), "seeds": int(seeds)}
    return parse_spec(
        {
            "name": name,
            "seed": seed,
            "workload": {"name": "cnn", "options": {"dataset": "digits"}},
            "search": {"optimizers": OPTIMIZERS, "warm_start": warm},
            "budget": budget,
        }
    )


def epochs_to_target(study: optuna.Study, metric: str, target: float) -> int | None:
    """Epochs the study trained, in trial order, until a trial first reached `target`."""
    from tuner.study.results import diverged, is_search_trial

    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    spent = 0
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if not is_search_trial(trial):
            continue
        curve = trial.user_attrs.get("curve") or []
        for point in curve:
            spent += 1
            value = point[metric]
            if (value >= target) if maximize else (value <= target):
                return spent
        if diverged(trial):
            spent += 1  # the epoch it diverged in was trained too
    return None


def run_study(spec: Any, url: str) -> tuple[optuna.Study, float]:
    """Create (warm-started where the spec says) and run one study's search, one worker."""
    from tuner.execution.worker import run_worker
    from tuner.runner import create_study

    started = time.perf_counter()
    study, transfers = create_study(spec, url)
    for transfer in transfers:
        print(f"  {transfer.describe()}")
    run_worker(spec, url, threads=1)
    return study, time.perf_counter() - started


def confirm_study(study: optuna.Study, spec: Any, url: str) -> None:
    """Confirm a searched study's winners, as tuner.runner.run does after the search."""
    from tuner.execution.worker import run_worker
    from tuner.runner import queued_only
    from tuner.study import confirmation

    print(f"  {confirmation.queue_runs(study, spec).describe(spec.budget.confirm.seeds)}")
    run_worker(queued_only(study, spec), url, threads=1)


def _median(values: list[int | None]) -> float | None:
    """The median, a miss counted as never (later than any hit); None when it is a miss."""
    never = float("inf")
    ordered = sorted(never if value is None else float(value) for value in values)
    half = len(ordered) // 2
    middle = ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2
    return None if middle == never else middle


def _hits(values: list[int | None]) -> str:
    return f"{sum(value is not None for value in values)}/{len(values)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="to split seeds over runs")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument(
        "--target", type=float, action="append", help="repeatable (default: 0.9777 and 0.9833)"
    )
    parser.add_argument(
        "--confirm",
        metavar="TOPxSEEDS",
        help="then confirm the first study's winners (e.g. 3x3) and warm-start a third from them",
    )
    parser.add_argument("--storage", help="a database URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    targets = args.target or [0.9777, 0.9833]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = args.storage or f"sqlite:///{tempfile.mkdtemp()}/warm_start.db"
    # One column of epochs to target per study kind, per target.
    kinds = ["cold", "warm"] + (["warm, first confirmed"] if args.confirm else [])
    spent = {kind: {target: [] for target in targets} for kind in kinds}

    def measure(kind: str, study: optuna.Study, seconds: float) -> None:
        for target in targets:
            spent[kind][target].append(epochs_to_target(study, first.metric, target))
        found = [spent[kind][target][-1] for target in targets]
        print(f"seed {seed}: {kind} study {found} epochs ({seconds:.0f} s)")

    for seed in range(args.first_seed, args.first_seed + args.seeds):
        first = bench_spec(f"cold-{seed}", seed, args.trials, args.epochs, [], args.confirm)
        study, seconds = run_study(first, url)
        measure("cold", study, seconds)
        second = bench_spec(f"warm-{seed}", seed + 1000, args.trials, args.epochs, [first.name])
        measure("warm", *run_study(second, url))
        if args.confirm:  # the same first study, its winners now ranked by their mean
            confirm_study(study, first, url)
            third = bench_spec(
                f"warm-confirmed-{seed}", seed + 1000, args.trials, args.epochs, [first.name]
            )
            measure("warm, first confirmed", *run_study(third, url))
    print(f"\n{args.trials} trials x {args.epochs} epochs, {args.seeds} seeds")
    print("epochs to target (median, a miss counted as never; hits; each seed):")
    for target in targets:
        cold = _median(spent["cold"][target])
        print(f"{first.metric} >= {target}:")
        for kind in kinds:
            values = spent[kind][target]
            median = _median(values)
            ratio = f", cold/this {cold / median:.1f}x" if cold and median else ""
            print(f"  {kind}: {median} ({_hits(values)} hit) {values}{ratio}")


if __name__ == "__main__":
    main()
