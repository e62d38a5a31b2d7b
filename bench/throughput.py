"""Trials per second for a trivial workload: tuner vs plain Optuna vs Ray Tune + OptunaSearch.

All three run TPE studies on the same PostgreSQL database with two concurrent workers, in one
run of this script, so their ratios are meaningful on whatever machine runs it:

- tuner: `tuner.run()` with 2 Ray worker tasks (worker start-up included; `ray.init` not), on
  Rosenbrock with one optimizer step per trial, searching SGD/Adam with learning rate, β1, β2
  and ε (up to 5 parameters, conditional).
- plain Optuna: creating the study, then 2 processes calling `study.optimize()` whose
  objective samples the same search space (through `tuner.search.space.sample_config` on the same
  spec) and evaluates Rosenbrock at a point drawn from it: what a hand-written Optuna script
  would cost, so the ratio measures tuner's overhead, not a difference in search spaces.
- Ray Tune 2.x + OptunaSearch(storage=RDBStorage): 2 concurrent trials, one trainable per
  trial, Rosenbrock + 2 parameters (needs the `bench` extra: pip install -e '.[bench]').

    python bench/throughput.py [--trials 200] [--repeat 3] [--tune-trials 30] [--storage URL]

With --repeat N, plain Optuna and tuner run N times each, alternately, and the medians are
compared: on a small machine a single run moves with whatever else is running.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
import uuid
from typing import Any, NamedTuple

import optuna

DEFAULT_STORAGE = os.environ.get(
    "TUNER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def bench_spec(name: str, trials: int, storage: str | None = None) -> Any:
    """The study both tuner and plain Optuna run."""
    from tuner.spec import parse_spec

    return parse_spec(
        {
            "name": name,
            "workload": {"name": "rosenbrock", "options": {"steps_per_epoch": 1}},
            "search": {"optimizers": ["sgd", "adam"], "weight_decay": "off"},
            "budget": {"trials": trials, "epochs": 1},
            "pruner": {"name": "none"},
            "execution": {"workers": 2, "storage": storage, "gpus_per_trial": 0.0},
        }
    )


def _plain_worker(name: str, url: str, trials: int) -> None:
    from tuner.search.samplers import make_sampler
    from tuner.search.space import sample_config

    spec = bench_spec(name, trials)

    def objective(trial: optuna.Trial) -> float:
        config = sample_config(trial, spec)
        x, y = config.learning_rate, 1.0 - config.learning_rate
        return (1 - x) ** 2 + 100 * (y - x**2) ** 2

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=url, sampler=make_sampler(spec))
    study.optimize(objective, n_trials=trials)


class Rate(NamedTuple):
    """Trials/s over the whole run, and steady: over the middle 80% of the trials, by start
    time (what a trial costs once the workers are up: start-up and the end left out)."""

    overall: float
    steady: float


def _rate(name: str, url: str, elapsed: float) -> Rate:
    """The study's rates; then the study is deleted."""
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    starts = sorted(trial.datetime_start for trial in trials)
    first, last = len(starts) // 10, len(starts) - 1 - len(starts) // 10
    optuna.delete_study(study_name=name, storage=url)
    steady = (last - first) / (starts[last] - starts[first]).total_seconds()
    return Rate(len(trials) / elapsed, steady)


def plain_optuna(url: str, trials: int) -> Rate:
    """Trials/s of 2 processes running study.optimize() on one study."""
    name = f"bench-plain-{uuid.uuid4().hex[:8]}"
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_plain_worker, args=(name, url, trials // 2)) for _ in range(2)
    ]
    started = time.perf_counter()
    optuna.create_study(study_name=name, storage=url)  # timed, as tuner.run() creates its own
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return _rate(name, url, time.perf_counter() - started)


def tuner_ray(url: str, trials: int) -> Rate:
    """Trials/s of `tuner.run()` with 2 Ray workers (Ray started before the clock starts)."""
    import ray

    import tuner

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    name = f"bench-tuner-{uuid.uuid4().hex[:8]}"
    spec = bench_spec(name, trials, url)
    started = time.perf_counter()
    tuner.run(spec)
    elapsed = time.perf_counter() - started
    ray.shutdown()
    return _rate(name, url, elapsed)


def ray_tune(url: str, trials: int) -> float:
    """Trials/s of Ray Tune with OptunaSearch storing into the same database."""
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    def trainable(config: dict) -> dict:
        x, y = config["x"], config["y"]
        return {"loss": (1 - x) ** 2 + 100 * (y - x**2) ** 2}

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    name = f"bench-tune-{uuid.uuid4().hex[:8]}"
    space = {
        "x": tune.uniform(-2, 2),
        "y": tune.uniform(-1, 3),
        "lr": tune.loguniform(1e-5, 1e-1),
        "kind": tune.choice(["a", "b"]),
    }
    search = OptunaSearch(
        metric="loss", mode="min", study_name=name, storage=optuna.storages.RDBStorage(url)
    )
    with tempfile.TemporaryDirectory() as results:
        runner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                search_alg=search, num_samples=trials, max_concurrent_trials=2
            ),
            run_config=tune.RunConfig(storage_path=results, verbose=0),
        )
        started = time.perf_counter()
        runner.fit()
        elapsed = time.perf_counter() - started
    ray.shutdown()
    optuna.delete_study(study_name=name, storage=url)
    return trials / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each, alternately")
    parser.add_argument("--tune-trials", type=int, default=30, help="Ray Tune is slow: fewer")
    parser.add_argument("--storage", default=DEFAULT_STORAGE)
    parser.add_argument("--skip-tune", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    plains: list[Rate] = []
    ours_runs: list[Rate] = []
    for run in range(args.repeat):
        plains.append(plain_optuna(args.storage, args.trials))
        ours_runs.append(tuner_ray(args.storage, args.trials))
        if args.repeat > 1:
            print(
                f"run {run + 1}: plain Optuna {plains[-1].overall:.2f}, tuner "
                f"{ours_runs[-1].overall:.2f} trials/s "
                f"({ours_runs[-1].overall / plains[-1].overall:.2f}x); steady "
                f"{plains[-1].steady:.2f}, {ours_runs[-1].steady:.2f} "
                f"({ours_runs[-1].steady / plains[-1].steady:.2f}x)"
            )
    plain = Rate(*(statistics.median(rates) for rates in zip(*plains, strict=True)))
    ours = Rate(*(statistics.median(rates) for rates in zip(*ours_runs, strict=True)))
    median = " (medians)" if args.repeat > 1 else ""
    print(f"plain Optuna, 2 processes:        {plain.overall:7.2f} trials/s{median}")
    print(f"tuner, 2 Ray workers:             {ours.overall:7.2f} trials/s")
    print(f"tuner / plain Optuna:             {ours.overall / plain.overall:7.2f}x (goal >= 0.8)")
    print(
        f"steady (middle 80% of trials): plain {plain.steady:.2f}, tuner "
        f"{ours.steady:.2f} trials/s, {ours.steady / plain.steady:.2f}x"
    )
    if not args.skip_tune:
        tune_rate = ray_tune(args.storage, args.tune_trials)
        print(f"Ray Tune + OptunaSearch:          {tune_rate:7.2f} trials/s")
        print(f"tuner / Ray Tune:                 {ours.overall / tune_rate:7.2f}x")


if __name__ == "__main__":
    main()
