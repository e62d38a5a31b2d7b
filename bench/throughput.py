"""Trials per second for a trivial workload: tuner vs plain Optuna vs Ray Tune + OptunaSearch.

All three run the same study: tuner's search space for SGD/Adam (optimizer, learning rate,
and Adam's β1, β2 and ε when Adam is drawn: up to 5 parameters, conditional), sampled through
`tuner.search.space.sample_config` on one spec with the spec's TPE sampler, the same number of
trials, two at a time, on the same PostgreSQL database, in one run of this script, so their
ratios are meaningful on whatever machine runs it. Each side runs in processes of its own at
this script's niceness (Ray's workers too: both Rays are told a worker niceness of 0, which
adds nothing, where Ray's default adds 15), so under `nice -n 10` on a shared machine all three
move together.

- tuner: `tuner.runner.run(spec)` in a fresh process, as `tuner run` calls it, so it starts
  whatever backend `tuner run` starts on this machine (no cluster address given): this script
  starts none itself. Counted from the call to its return: the backend's start (a private Ray,
  or local worker processes), the study's creation, the
  workers' start-up (imports of torch and the optimizer libraries), every trial and the
  workers' end; not the interpreter's start, `import tuner.runner`, or the backend's shutdown
  after the return. Each trial trains the Rosenbrock workload for one optimizer step.
- plain Optuna: what a hand-written Optuna script costs. Counted from creating the study to
  both of its 2 processes having exited: spawning them (imports included), each calling
  `study.optimize()` for half the trials with an objective that samples the same space and
  evaluates Rosenbrock at a point drawn from it (`rosenbrock_at`), and their exit.
- Ray Tune 2.x + OptunaSearch(storage=RDBStorage), 2 concurrent trials, one trainable per
  trial: the space is OptunaSearch's define-by-run function calling the same `sample_config`
  on the same spec, with the spec's sampler, and the trainable evaluates `rosenbrock_at` as
  plain Optuna does. In a fresh process, counted from `import ray` (then `ray.init`, 2 CPUs,
  worker niceness 0 as tuner's local Ray) to `Tuner.fit()` returning; not `ray.shutdown()`.
  Needs the `bench` extra: pip install -e '.[bench]'.

    python bench/throughput.py [--trials 200] [--repeat 3] [--storage URL] [--skip-tune]

Each side prints trials/s over its whole count, the steady rate (the middle 80% of its trials
by start time: what a trial costs once the workers are up) and its start-up (from the clock's
start to the first trial's start). With --repeat N, plain Optuna and tuner run N times each,
alternately, and the medians are compared, and each tuner run against the plain run just
before it: on a small machine a single run moves with whatever else is running. Ray Tune runs
once, after them: it is an order of magnitude slower, more than any run-to-run noise.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import multiprocessing
import os
import queue
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any, NamedTuple

import optuna

DEFAULT_STORAGE = os.environ.get(
    "TUNER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def bench_spec(name: str, trials: int, storage: str | None = None) -> Any:
    """The study all three sides run."""
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


def rosenbrock_at(learning_rate: float) -> float:
    """The objective of plain Optuna and Ray Tune: Rosenbrock at a point drawn from the config
    (x its learning rate, y = 1 - x), as cheap as tuner's one optimizer step or cheaper."""
    x, y = learning_rate, 1.0 - learning_rate
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def _plain_worker(name: str, url: str, trials: int) -> None:
    from tuner.search.samplers import make_sampler
    from tuner.search.space import sample_config

    spec = bench_spec(name, trials)

    def objective(trial: optuna.Trial) -> float:
        return rosenbrock_at(sample_config(trial, spec).learning_rate)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=url, sampler=make_sampler(spec))
    study.optimize(objective, n_trials=trials)


class Rate(NamedTuple):
    """Trials/s over the whole run, and steady: over the middle 80% of the trials, by start
    time (what a trial costs once the workers are up: start-up and the end left out); and
    start-up, the seconds from the clock's start to the first trial's."""

    overall: float
    steady: float
    startup: float


class Clock(NamedTuple):
    """When a side's clock started (the wall clock, as trials' start times are recorded), and
    the seconds it ran."""

    since: datetime.datetime
    elapsed: float


def _rate(name: str, url: str, clock: Clock) -> Rate:
    """The study's rates; then the study is deleted."""
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    starts = sorted(trial.datetime_start for trial in trials)
    first, last = len(starts) // 10, len(starts) - 1 - len(starts) // 10
    optuna.delete_study(study_name=name, storage=url)
    steady = (last - first) / (starts[last] - starts[first]).total_seconds()
    startup = (starts[0] - clock.since).total_seconds()
    return Rate(len(trials) / clock.elapsed, steady, startup)


def _in_fresh_process(target: Any, *args: Any) -> Any:
    """What `target(*args, out)` puts on `out`, run in a new interpreter (spawned, not forked,
    and not daemonic: a backend may start processes of its own)."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=target, args=(*args, out))
    process.start()
    while True:
        try:
            result = out.get(timeout=1.0)
            break
        except queue.Empty:
            if not process.is_alive():
                raise RuntimeError(
                    f"{target.__name__} exited with {process.exitcode} and no result"
                ) from None
    process.join()
    return result


def plain_optuna(url: str, trials: int) -> Rate:
    """Trials/s of 2 processes running study.optimize() on one study."""
    name = f"bench-plain-{uuid.uuid4().hex[:8]}"
    context = multiprocessing.get_context("spawn")
    shares = (trials - trials // 2, trials // 2)
    workers = [context.Process(target=_plain_worker, args=(name, url, n)) for n in shares]
    since, started = datetime.datetime.now(), time.perf_counter()
    optuna.create_study(study_name=name, storage=url)  # timed, as tuner.run() creates its own
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return _rate(name, url, Clock(since, time.perf_counter() - started))


def _tuner_process(name: str, url: str, trials: int, out: Any) -> None:
    """`tuner.runner.run(spec)` as `tuner run` calls it; puts the seconds from the call to its
    return, and whether it started Ray."""
    from tuner.runner import run

    spec = bench_spec(name, trials, url)
    since, started = datetime.datetime.now(), time.perf_counter()
    run(spec, say=lambda line: print(line, flush=True))
    clock = Clock(since, time.perf_counter() - started)
    ray = sys.modules.get("ray")
    on_ray = ray is not None and ray.is_initialized()
    out.put((clock, on_ray))
    if on_ray:  # after the clock, as a `tuner run` process exits
        ray.shutdown()


def tuner_run(url: str, trials: int) -> tuple[Rate, bool]:
    """Trials/s of `tuner.runner.run()` in a fresh process, and whether it ran on Ray."""
    name = f"bench-tuner-{uuid.uuid4().hex[:8]}"
    clock, on_ray = _in_fresh_process(_tuner_process, name, url, trials)
    return _rate(name, url, clock), on_ray


def _tune_space(spec: Any, trial: optuna.Trial) -> dict[str, float]:
    """OptunaSearch's define-by-run space: the spec's, as plain Optuna samples it. The learning
    rate it returns is what the trainable evaluates (it is also a parameter, unless sampled on
    another scale). A function of the module, not a closure: Tune pickles its searcher."""
    from tuner.search.space import sample_config

    return {"learning_rate": sample_config(trial, spec).learning_rate}


def _tune_process(name: str, url: str, trials: int, out: Any) -> None:
    """Ray Tune + OptunaSearch on the spec's space and sampler; puts the seconds it took."""
    from tuner.search.samplers import make_sampler
    from tuner.search.space import sample_config  # noqa: F401 (imported before the clock)

    since, started = datetime.datetime.now(), time.perf_counter()  # Ray's import counts too
    import ray
    from ray import cloudpickle, tune
    from ray.tune.search.optuna import OptunaSearch

    # This file is __mp_main__ here, which Ray's workers cannot import: ship rosenbrock_at.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    spec = bench_spec(name, trials)

    def trainable(config: dict[str, Any]) -> None:
        tune.report({"loss": rosenbrock_at(config["learning_rate"])})

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _system_config={"worker_niceness": 0},
    )
    search = OptunaSearch(
        space=functools.partial(_tune_space, spec),
        metric="loss",
        mode="min",
        sampler=make_sampler(spec),
        study_name=name,
        storage=optuna.storages.RDBStorage(url),
    )
    with tempfile.TemporaryDirectory() as results:
        runner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=search, num_samples=trials, max_concurrent_trials=2
            ),
            run_config=tune.RunConfig(storage_path=results, verbose=0),
        )
        runner.fit()
        out.put(Clock(since, time.perf_counter() - started))
    ray.shutdown()


def ray_tune(url: str, trials: int) -> Rate:
    """Trials/s of Ray Tune with OptunaSearch storing into the same database."""
    name = f"bench-tune-{uuid.uuid4().hex[:8]}"
    return _rate(name, url, _in_fresh_process(_tune_process, name, url, trials))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200, help="trials of each study")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each, alternately")
    parser.add_argument("--storage", default=DEFAULT_STORAGE)
    parser.add_argument("--skip-tune", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    plains: list[Rate] = []
    ours_runs: list[Rate] = []
    backends: set[bool] = set()
    for run in range(args.repeat):
        plains.append(plain_optuna(args.storage, args.trials))
        ours, on_ray = tuner_run(args.storage, args.trials)
        ours_runs.append(ours)
        backends.add(on_ray)
        if args.repeat > 1:
            print(
                f"run {run + 1}: plain Optuna {plains[-1].overall:.2f}, tuner "
                f"{ours_runs[-1].overall:.2f} trials/s "
                f"({ours_runs[-1].overall / plains[-1].overall:.2f}x); steady "
                f"{plains[-1].steady:.2f}, {ours_runs[-1].steady:.2f} "
                f"({ours_runs[-1].steady / plains[-1].steady:.2f}x); start-up "
                f"{plains[-1].startup:.1f} s, {ours_runs[-1].startup:.1f} s",
                flush=True,
            )
    plain = Rate(*(statistics.median(rates) for rates in zip(*plains, strict=True)))
    ours = Rate(*(statistics.median(rates) for rates in zip(*ours_runs, strict=True)))
    backend = {frozenset({True}): "Ray", frozenset({False}): "no Ray"}.get(
        frozenset(backends), "Ray in some runs"
    )
    median = f" (medians of {args.repeat})" if args.repeat > 1 else ""
    print(f"{args.trials} trials each, 2 at a time{median}")
    print(f"plain Optuna, 2 processes:          {plain.overall:7.2f} trials/s")
    print(f"tuner.runner.run, 2 workers ({backend}): {ours.overall:7.2f} trials/s")
    print(f"tuner / plain Optuna:               {ours.overall / plain.overall:7.2f}x (goal >= 0.8)")
    print(
        f"steady (middle 80% of trials): plain {plain.steady:.2f}, tuner "
        f"{ours.steady:.2f} trials/s, {ours.steady / plain.steady:.2f}x"
    )
    print(
        f"start-up (to the first trial):     plain {plain.startup:.1f} s, "
        f"tuner {ours.startup:.1f} s"
    )
    if args.repeat > 1:  # each run against the plain run just before it, on the same load
        paired = [a.overall / b.overall for a, b in zip(ours_runs, plains, strict=True)]
        print(
            f"tuner / plain Optuna run by run:    "
            f"{', '.join(f'{ratio:.2f}' for ratio in paired)}x "
            f"(median {statistics.median(paired):.2f}x)"
        )
    if not args.skip_tune:
        tune = ray_tune(args.storage, args.trials)
        print(f"Ray Tune + OptunaSearch, 2 at once: {tune.overall:7.2f} trials/s (one run)")
        print(f"tuner / Ray Tune:                   {ours.overall / tune.overall:7.2f}x")
        print(
            f"steady: Ray Tune {tune.steady:.2f} trials/s, tuner / Ray Tune "
            f"{ours.steady / tune.steady:.2f}x; Ray Tune's start-up {tune.startup:.1f} s"
        )


if __name__ == "__main__":
    main()
