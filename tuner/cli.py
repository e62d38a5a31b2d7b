"""The ``tuner`` command: run studies, print the best configuration, fetch data sets.

Every `TunerError` (bad study file, unreachable storage, unknown study, Ray failing) ends as
one line on stderr and its exit status (2 for a mistake, 1 for a lost resource); heavy
libraries are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from tuner.errors import TunerError


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tuner.execution.backend import warm_up
    from tuner.runner import run, with_overrides
    from tuner.spec import load_spec
    from tuner.views.display import StudyProgress, print_summary

    overrides = list(args.set or [])
    if args.trials is not None:
        overrides.append(f"budget.trials={args.trials}")
    if args.timeout is not None:
        overrides.append(f"budget.timeout_seconds={args.timeout}")
    if args.confirm is not None:
        top, seeds = args.confirm
        overrides.append(f"budget.confirm={{ top = {top}, seeds = {seeds} }}")
    spec = with_overrides(
        load_spec(args.spec, overrides),
        workers=args.workers,
        ray_address=args.ray_address,
        storage=args.storage,
        trials_per_worker=args.batch,
        warm_start=args.warm_start,
    )
    warm_up(spec.execution)  # before the progress display's thread (see its doc)
    console = Console()
    with StudyProgress(console, spec.budget.trials) as progress:
        study = run(
            spec,
            on_start=progress.start,
            on_tick=progress.tick,
            say=lambda line: console.print(line, markup=False, soft_wrap=True),
        )
    from tuner.storage.rdb import resolve_storage_url

    # A study that completed no trial has no result: a script must not take it for one.
    completed = print_summary(console, study, resolve_storage_url(None, spec.execution.storage))
    return 0 if completed else 1


def _best(args: argparse.Namespace) -> int:
    from tuner.study.best import best_config

    config = best_config(args.study, optimizer=args.optimizer, storage=args.storage)
    if args.json:
        print(json.dumps(config.to_dict(), indent=2, default=str))  # a checkpoint path
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title=f"Best of study {config.study} (trial {config.trial_number})", show_header=False
    )
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in config.rows():
        # escape: rich would read "[torch.optim:SGD]" as markup and drop it.
        table.add_row(key, escape(value))
    console = Console()
    console.print(table)
    if not config.confirmed:
        console.print(
            f"Study {config.study} was never confirmed: this is one run on one seed, and on "
            "small data a lucky seed wins. Re-run its study file with --confirm 3x3 to "
            "re-train the top 3 configurations on 3 fresh seeds each.",
            markup=False,
        )
    return 0


def _worker(args: argparse.Namespace) -> int:
    from tuner.errors import SpecError
    from tuner.execution.worker import run_worker
    from tuner.runner import with_overrides
    from tuner.spec import parse_spec
    from tuner.study.results import open_study
    from tuner.workloads.user import code_to_run

    study, url = open_study(args.study, args.storage)
    recorded = study.user_attrs.get("spec")
    if not isinstance(recorded, dict):
        raise SpecError(f"study {args.study!r} was not created by `tuner run`: it records no spec")
    # Said before it is imported: the code comes from whoever wrote the study into the database.
    print(f"tuner worker: study {args.study} runs {code_to_run(recorded)}", flush=True)
    spec = parse_spec(recorded, f"study {args.study!r}")
    spec = with_overrides(spec, trials_per_worker=args.batch)
    # Its sampler's stream: the study's seed, this index and the trials the study already has
    # (tuner.study.lifecycle.sampler_seed), so the same command draws the same trials again.
    summary = run_worker(spec, url, worker=args.name, threads=args.threads, stream=args.index)
    print(f"worker {summary.worker}: {summary.trials} trials of {args.study}; no trial left to run")
    return 0


def _status(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tuner.spec import recorded_execution
    from tuner.storage.rdb import writable
    from tuner.study.lifecycle import resolve_abandoned
    from tuner.study.results import open_study
    from tuner.views.display import print_status

    study, url = open_study(args.study, args.storage)
    recorded = study.user_attrs.get("spec")
    # A study `tuner run` made: its workers' heartbeat settings. A file this user cannot write
    # is shown as it stands: its trials are the workers' (and their owner's) to settle.
    if isinstance(recorded, dict) and writable(url):
        execution = recorded_execution(recorded, f"study {args.study!r}")
        resolve_abandoned(args.study, url, execution)
    print_status(Console(), study)
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from tuner.views.dashboard import serve

    return serve(args.storage, args.host, args.port)


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tuner.views.report import FIGURES, write_report

    page = write_report(args.study, Path(args.out), args.storage)
    drawn = [f"{name}.png" for name in FIGURES if (page.parent / f"{name}.png").exists()]
    print(f"Report on study {args.study}: {page}\n  figures: {', '.join(drawn)}")
    return 0


def _data_fetch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tuner.workloads.datasets import fetch_dataset

    name = args.dataset.replace("-", "_")
    paths = fetch_dataset(name, Path(args.dir) if args.dir else None, progress=print)
    print(
        f"{args.dataset}: {len(paths)} files ready"
        if paths
        else f"{args.dataset} ships with its package"
    )
    return 0


def _trials_per_worker(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'auto', not {text!r}")
    return value


def _index(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected 0, 1, 2 or another whole number, not {text!r}")
    return int(text)


def _confirm(text: str) -> tuple[int, int]:
    top, sep, seeds = text.lower().partition("x")
    if sep and top.isdigit() and seeds.isdigit() and int(top) > 0 and int(seeds) > 0:
        return int(top), int(seeds)
    raise argparse.ArgumentTypeError(
        f"expected TOPxSEEDS with positive numbers, e.g. 3x3 (the top 3 on 3 seeds), not {text!r}"
    )


BATCH_HELP = (
    "trials one worker trains at once, stacked where their optimizer allows "
    "(default: the file's [execution] trials_per_worker; 'auto': 64 on a GPU, 1 on a CPU)"
)


def _version() -> str:
    """The installed package's version (pyproject.toml's), read from its metadata."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tuner")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


class _Parser(argparse.ArgumentParser):
    """argparse with a usage mistake told in one line, as every other mistake is: what is
    wrong and where the help is, not the whole usage block (subcommands' parsers are these
    too: argparse makes them of the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (a function, so the README's reference can be checked against it)."""
    parser = _Parser(
        prog="tuner", description="Hyperparameter search for deep-learning optimizers."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    storage_help = (
        "study database URL (default: $TUNER_STORAGE, else ~/.local/share/tuner/studies.db)"
    )

    run = commands.add_parser("run", help="run a study file to the end of its budget")
    run.add_argument("spec", help="a study file, e.g. studies/quickstart.toml")
    run.add_argument("--storage", help=storage_help)
    run.add_argument("--workers", type=int, help="worker count (default: the file's [execution])")
    run.add_argument(
        "--ray-address", help="an existing Ray cluster, HOST:6379 (default: a local one)"
    )
    run.add_argument("--batch", type=_trials_per_worker, metavar="K", help=BATCH_HELP)
    run.add_argument("--trials", type=int, help="trial budget (overrides [budget] trials)")
    run.add_argument("--timeout", type=float, help="wall-time budget in seconds")
    run.add_argument(
        "--warm-start",
        action="append",
        metavar="STUDY",
        help="seed a new study with an earlier study's best configurations and agreeing "
        "trials (repeatable; adds to the file's [search] warm_start)",
    )
    run.add_argument(
        "--confirm",
        type=_confirm,
        metavar="TOPxSEEDS",
        help="after the search, re-train the TOP best configurations on SEEDS fresh seeds "
        "each, e.g. 3x3 (overrides [budget] confirm)",
    )
    run.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a study-file key, e.g. --set budget.epochs=3 (repeatable)",
    )
    run.set_defaults(handler=_run)

    best = commands.add_parser("best", help="print a study's best configuration")
    best.add_argument("study", help="the study's name")
    best.add_argument("--optimizer", help="only trials of this optimizer type, e.g. adamw")
    best.add_argument("--json", action="store_true", help="print JSON instead of a table")
    best.add_argument("--storage", help=storage_help)
    best.set_defaults(handler=_best)

    worker = commands.add_parser(
        "worker", help="add a worker to a running study (no Ray needed: any scheduler or shell)"
    )
    worker.add_argument("study", help="the study's name")
    worker.add_argument("--storage", help=storage_help)
    worker.add_argument("--name", help="the name recorded on its trials (default host:pid)")
    worker.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    worker.add_argument("--batch", type=_trials_per_worker, metavar="K", help=BATCH_HELP)
    worker.add_argument(
        "--index",
        type=_index,
        default=0,
        metavar="N",
        help="this worker's index among the workers started together (default 0): with the "
        "study's seed it seeds the worker's sampler, so give each its own",
    )
    worker.set_defaults(handler=_worker)

    status = commands.add_parser("status", help="trials by state, running trials, throughput")
    status.add_argument("study", help="the study's name")
    status.add_argument("--storage", help=storage_help)
    status.set_defaults(handler=_status)

    dashboard = commands.add_parser(
        "dashboard", help="serve optuna-dashboard on the study database (importances, curves)"
    )
    dashboard.add_argument("--storage", help=storage_help)
    dashboard.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)"
    )
    dashboard.set_defaults(handler=_dashboard)

    report = commands.add_parser(
        "report", help="write a static HTML report with PNG plots comparing the optimizers"
    )
    report.add_argument("study", help="the study's name")
    report.add_argument("--out", default="report", help="folder for index.html and the PNGs")
    report.add_argument("--storage", help=storage_help)
    report.set_defaults(handler=_report)

    data = commands.add_parser("data", help="data sets for the CNN workloads")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    fetch = data_commands.add_parser("fetch", help="download MNIST or Fashion-MNIST IDX files")
    fetch.add_argument("dataset", choices=["mnist", "fashion-mnist"])
    fetch.add_argument(
        "--dir",
        help="data folder (default: $TUNER_DATA_DIR, else $XDG_CACHE_HOME/tuner/data, "
        "else ~/.cache/tuner/data)",
    )
    fetch.set_defaults(handler=_data_fetch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tuner`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        status = args.handler(args)
        sys.stdout.flush()  # a reader gone (`tuner best --json | head`) shows here, not at exit
        return status
    except BrokenPipeError:
        # Python's recipe (docs: signal, "Note on SIGPIPE"): stdout to /dev/null, so the flush
        # at exit does not raise again, and the status of a write to a closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except TunerError as error:
        print(f"tuner: error: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print(
            "tuner: interrupted; the running trials are re-run when the study is resumed",
            file=sys.stderr,
        )
        return 130


def entry() -> None:
    """The ``tuner`` console script: `main`, then an exit that skips the interpreter's teardown.

    Finalizing the interpreter after torch and Ray have been loaded takes 1–3 s on a small
    machine (freeing memory the OS takes back at once anyway), and Ray's exit hook sleeps
    0.5 s before stopping a local Ray. So Ray is stopped here, the output flushed, and the
    process ends (bench/overhead.py measures the teardown against plain Optuna's).
    """
    status = main()
    if "ray" in sys.modules:
        import ray

        ray.shutdown()
    logging.shutdown()  # flushes the log handlers, which atexit would have done
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    entry()
