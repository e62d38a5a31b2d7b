"""What a `tuner run` costs besides training: start-up, teardown, a trial's epoch, its curve.

Each figure is measured beside a peer in the same run of this script, so the ratios hold on
whatever machine runs it (a loaded one moves both alike):

- start-up and teardown: `tuner run` of a two-trial Rosenbrock study, from launching the
  command to its first trial's start, and from its last trial's end to the command's exit;
  peers: a plain Optuna script (imports torch, creates the study, `study.optimize`) of the
  same two trials, measured the same way, and `python -c "import torch, optuna"` from launch
  to exit (issue 21's goal: start-up at most 1.5x that).
- the quickstart: `tuner run studies/quickstart.toml` (40 trials, 2 workers, the README's
  first command) from launch to exit (goal: 15 s or less on 2 quiet cores).
- a trial on real data: SimpleCNN on the offline 5,000 MNIST digits, Adam at lr 1e-3, two
  epochs, as one `tuner run` trial (its recorded `wall_seconds`, from its claim to its end:
  sampling, model, data, training and its records); peer: a plain PyTorch loop over the same
  model, data and steps in a fresh process, with torch's default threads, counted from the
  built model and data to its last evaluation (so the ratio charges tuner its data loading).
- commits and CPU per trial: a worker's one-step trials against plain Optuna's
  `study.optimize` over the same space, sampler and SQLite storage, in this process (a run of
  8 trials less a run of 8 more, so once-per-run costs fall out). Commits: the worker's own thread
  only (heartbeats beat by the clock). CPU: the process's, every thread's (heartbeats and
  the learning curves' recording included). Goals (issue 21): commits no more than
  Optuna's, CPU at most 0.8x.
- the learning-curve PNG: what recording one completed trial's curve costs the worker
  (LearningCurveRecorder.record on a real SQLite study), first call and the mean of the rest;
  peer: the quickstart trial it follows, from the start-up run.

    nice -n 10 python bench/overhead.py [--repeat 2]

With --repeat N each pair runs N times, alternately, and the medians are compared.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

ROOT = Path(__file__).parent.parent
QUICKSTART = ROOT / "studies" / "quickstart.toml"

#: The plain Optuna peer: the same two Rosenbrock trials, with torch imported as tuner's are.
PLAIN_OPTUNA = """
import sys, optuna, torch
optuna.logging.set_verbosity(optuna.logging.WARNING)

def objective(trial):
    lr = trial.suggest_float("learning_rate", 1e-5, 1e-2, log=True)
    point = torch.tensor([-1.0, 1.0], requires_grad=True)
    optimizer = torch.optim.SGD([point], lr=lr)
    for _ in range(100):
        optimizer.zero_grad()
        loss = (1 - point[0]) ** 2 + 100 * (point[1] - point[0] ** 2) ** 2
        loss.backward()
        optimizer.step()
    return float(loss)

study = optuna.create_study(study_name="quickstart", storage=sys.argv[1])
study.optimize(objective, n_trials=2)
"""

#: The plain PyTorch peer: tuner's CNN workload built directly, trained by a bare loop. Its clock
#: starts once the model and data are built (`import tuner` and the data loading are not what a
#: plain loop pays) and stops after the last evaluation.
PLAIN_TORCH = """
import sys, time, torch
from tuner.workloads import build_trainable
from tuner.spec import WorkloadSpec
from tuner.workloads.base import TrialContext

spec = WorkloadSpec(name="cnn", options={"dataset": "mnist_5k"})
trainable = build_trainable(spec, TrialContext(seed=0, device=torch.device("cpu"), batch_size=128))
started = time.perf_counter()
optimizer = torch.optim.Adam(trainable.model.parameters(), lr=1e-3)
generator = torch.Generator().manual_seed(0)
for epoch in range(int(sys.argv[1])):
    for closure in trainable.epoch(generator):
        optimizer.zero_grad()
        closure().backward()
        optimizer.step()
    trainable.evaluate()
print(time.perf_counter() - started)
"""


def _env(data_home: str) -> dict[str, str]:
    return {**os.environ, "XDG_DATA_HOME": data_home, "TUNER_STORAGE": ""}


def _edges(url: str, name: str) -> tuple[float, float, list[optuna.trial.FrozenTrial]]:
    """The first trial's start and the last trial's end (epoch seconds), and the trials."""
    trials = optuna.load_study(study_name=name, storage=url).trials
    first = min(trial.datetime_start for trial in trials).timestamp()
    last = max(trial.datetime_complete for trial in trials).timestamp()
    return first, last, trials


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run a command; its launch and exit times (epoch seconds) and its stdout."""
    launched = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    exited = time.time()
    if done.returncode != 0:
        raise SystemExit(f"{command[:4]} failed:\n{done.stderr[-2000:]}")
    return launched, exited, done.stdout


def startup_teardown(folder: Path, tool: str) -> tuple[float, float, float]:
    """(start-up, teardown, mean trial seconds) of one run of `tool` (tuner or optuna)."""
    url = f"sqlite:///{folder / f'{tool}.db'}"
    if tool == "tuner":
        command = [sys.executable, "-m", "tuner.cli", "run", str(QUICKSTART), "--storage", url]
        command += ["--trials", "2", "--workers", "1", "--set", "search.optimizers=['sgd']"]
        command += ["--set", "budget.epochs=1", "--set", "pruner.name='none'"]
    else:
        command = [sys.executable, "-c", PLAIN_OPTUNA, url]
    launched, exited, _ = _timed(command, _env(str(folder)))
    first, last, trials = _edges(url, "quickstart")
    seconds = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    return first - launched, exited - last, statistics.mean(seconds)


def imports_seconds(folder: Path) -> float:
    """Launch to exit of `python -c "import torch, optuna"`: the start-up goal's peer."""
    launched, exited, _ = _timed([sys.executable, "-c", "import torch, optuna"], _env(str(folder)))
    return exited - launched


def quickstart_seconds(folder: Path) -> float:
    """Launch to exit of the README's first command, on a fresh SQLite file."""
    url = f"sqlite:///{folder / 'quickstart.db'}"
    command = [sys.executable, "-m", "tuner.cli", "run", str(QUICKSTART), "--storage", url]
    launched, exited, _ = _timed(command, _env(str(folder)))
    return exited - launched


def cnn_trial(folder: Path, tool: str, epochs: int = 2) -> float:
    """Seconds of one SimpleCNN trial on mnist_5k (model, data and `epochs` epochs)."""
    if tool == "torch":
        _, _, out = _timed([sys.executable, "-c", PLAIN_TORCH, str(epochs)], _env(str(folder)))
        return float(out.strip())
    url = f"sqlite:///{folder / 'cnn.db'}"
    command = [sys.executable, "-m", "tuner.cli", "run", str(ROOT / "studies/mnist_5k_cnn.toml")]
    command += ["--storage", url, "--trials", "1", "--workers", "1", "--set", "name='cnn'"]
    for setting in (
        "search.optimizers=['adam']",
        "search.schedules=['constant']",
        "search.weight_decay='off'",
        "search.grad_clipping='off'",
        "search.lookahead='off'",
        "search.batch_sizes=[128]",
        "optimizers.adam={learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-8}",
        f"budget.epochs={epochs}",
        "pruner.name='none'",
    ):
        command += ["--set", setting]
    _timed(command, _env(str(folder)))
    (trial,) = optuna.load_study(study_name="cnn", storage=url).trials
    os.remove(folder / "cnn.db")
    return float(trial.user_attrs["wall_seconds"])


def curve_record(folder: Path, calls: int = 6) -> dict[str, float]:
    """Seconds for a 10-epoch learning curve: drawing the PNG (plot_curve, first call with the
    plotting libraries' import, then the mean of the next), and what recording it costs the
    worker (LearningCurveRecorder.record: the PNG is drawn by a thread of its own)."""
    from optuna.trial import TrialState

    from tuner.storage.artifacts import LearningCurveRecorder, plot_curve

    curve = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_accuracy": 1 - 1 / (e + 1)}
        for e in range(1, 11)
    ]
    drawing = []
    for call in range(calls):
        started = time.perf_counter()
        plot_curve(curve, folder / f"curve{call}.png", "trial 0: adam, lr 0.001")
        drawing.append(time.perf_counter() - started)
    study = optuna.create_study(storage=f"sqlite:///{folder / 'curves.db'}")
    recorder, recording = LearningCurveRecorder(), []
    for _ in range(calls):
        trial = study.ask()
        started = time.perf_counter()
        recorder.record(trial, TrialState.COMPLETE, curve, 5.0, f"trial {trial.number}")
        recording.append(time.perf_counter() - started)
        study.tell(trial, 0.0)
    recorder.finish()
    return {
        "draw_first": drawing[0],
        "draw": statistics.mean(drawing[1:]),
        "record": statistics.mean(recording[1:]),
    }


def _one_step(spec: Any, trial: optuna.Trial) -> float:
    """Plain Optuna's objective: the configuration sampled as tuner samples it, its optimizer
    built by the same library call, and one step of Rosenbrock from the quickstart's start."""
    import torch

    from tuner.search.space import sample_config

    point = torch.tensor([-1.0, 1.0], requires_grad=True)
    optimizer = sample_config(trial, spec).build_optimizer([point])
    optimizer.zero_grad()
    loss = (1 - point[0]) ** 2 + 100 * (point[1] - point[0] ** 2) ** 2
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def per_trial_costs(folder: Path) -> dict[str, dict[str, float]]:
    """Commits and CPU seconds per one-step quickstart trial: tuner's worker against plain
    Optuna's study.optimize over the same space, sampler and SQLite storage (module doc)."""
    import threading

    import sqlalchemy

    from tuner.execution.worker import run_worker
    from tuner.search.samplers import make_sampler
    from tuner.spec import load_spec
    from tuner.storage.rdb import open_storage
    from tuner.study import lifecycle as studies

    url = f"sqlite:///{folder / 'commits.db'}"
    settings = ["budget.epochs=1", "pruner.name='none'", "execution.heartbeat_seconds=600"]
    settings.append("workload.options={start=[-1.0, 1.0], steps_per_epoch=1}")
    settings.append("execution.grace_seconds=1200")  # no sweep inside a run but its first
    import torch._dynamo  # noqa: F401 (what the first optimizer of a process imports: once)

    counts: dict[str, list[int]] = {"tuner": [], "optuna": []}
    cpu: dict[str, list[float]] = {"tuner": [], "optuna": []}

    def count(connection: sqlalchemy.Connection) -> None:
        if threading.current_thread() is threading.main_thread():
            counting[-1] += 1

    for trials in (8, 24):  # the second run trains 16, the first 8
        spec = load_spec(QUICKSTART, [*settings, f"budget.trials={trials}"])
        studies.create_or_resume(spec, open_storage(url))
        plain = optuna.create_study(
            study_name="plain",
            storage=url,
            sampler=make_sampler(spec, spec.seed),
            load_if_exists=True,
        )
        for tool in ("tuner", "optuna"):
            counts[tool].append(0)
            counting = counts[tool]
            sqlalchemy.event.listen(sqlalchemy.Engine, "commit", count)
            started = time.process_time()
            try:
                if tool == "tuner":
                    run_worker(spec, url)
                else:
                    objective = functools.partial(_one_step, spec)
                    plain.optimize(objective, n_trials=trials - len(plain.trials))
            finally:
                cpu[tool].append(time.process_time() - started)
                sqlalchemy.event.remove(sqlalchemy.Engine, "commit", count)
    return {
        "commits": {tool: (second - first) / 8 for tool, (first, second) in counts.items()},
        "cpu_s": {tool: (second - first) / 8 for tool, (first, second) in cpu.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, alternated")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[str, list] = {
        "tuner": [],
        "optuna": [],
        "imports": [],
        "quickstart": [],
        "tuner_cnn": [],
        "torch_cnn": [],
    }
    with tempfile.TemporaryDirectory(prefix="tuner-overhead-") as scratch:
        for repeat in range(args.repeat):
            for tool in ("optuna", "tuner"):
                folder = Path(scratch) / f"{tool}-{repeat}"
                folder.mkdir()
                results[tool].append(startup_teardown(folder, tool))
            results["imports"].append(imports_seconds(Path(scratch)))
            results["quickstart"].append(quickstart_seconds(Path(scratch) / f"tuner-{repeat}"))
            for tool in ("torch", "tuner"):
                results[f"{tool}_cnn"].append(cnn_trial(Path(scratch), tool))
        curves = curve_record(Path(scratch))
        costs = per_trial_costs(Path(scratch))

    def median(name: str, index: int | None = None) -> float:
        values = results[name] if index is None else [run[index] for run in results[name]]
        return statistics.median(values)

    figures = {
        "startup_s": {
            **{tool: median(tool, 0) for tool in ("tuner", "optuna")},
            "import_torch_optuna": median("imports"),
        },
        "quickstart_s": median("quickstart"),
        "teardown_s": {tool: median(tool, 1) for tool in ("tuner", "optuna")},
        "cnn_trial_s": {"tuner": median("tuner_cnn"), "torch": median("torch_cnn")},
        "curve_s": curves,
        "quickstart_trial_s": median("tuner", 2),
        "per_trial": costs,
    }
    startup, teardown = figures["startup_s"], figures["teardown_s"]
    cnn, trial = figures["cnn_trial_s"], figures["quickstart_trial_s"]
    imports = startup["import_torch_optuna"]
    print(
        f"start-up (launch → first trial): tuner {startup['tuner']:.2f} s, plain Optuna "
        f"{startup['optuna']:.2f} s: {startup['tuner'] / startup['optuna']:.2f}×; "
        f"`import torch, optuna` {imports:.2f} s: {startup['tuner'] / imports:.2f}× (goal ≤ 1.5×)"
    )
    print(f"quickstart (launch → exit):      tuner {figures['quickstart_s']:.1f} s (goal ≤ 15 s)")
    print(
        f"teardown (last trial → exit):    tuner {teardown['tuner']:.2f} s, plain Optuna "
        f"{teardown['optuna']:.2f} s: {teardown['tuner'] / max(teardown['optuna'], 1e-3):.2f}×"
    )
    print(
        f"SimpleCNN trial (2 epochs):      tuner {cnn['tuner']:.2f} s, plain PyTorch "
        f"{cnn['torch']:.2f} s: {cnn['tuner'] / cnn['torch']:.2f}×"
    )
    print(
        f"curve PNG: drawing {curves['draw']:.3f} s (first {curves['draw_first']:.2f} s), "
        f"{curves['draw'] / trial:.0%} of a {trial:.2f} s quickstart trial; what the trial "
        f"pays to record it: {curves['record']:.3f} s"
    )
    commits, cpu = costs["commits"], costs["cpu_s"]
    print(
        f"commits per one-step trial:      tuner {commits['tuner']:.2f}, plain Optuna "
        f"{commits['optuna']:.2f}: {commits['tuner'] / commits['optuna']:.2f}× (goal ≤ 1×)"
    )
    print(
        f"CPU per one-step trial:          tuner {cpu['tuner'] * 1e3:.1f} ms, plain Optuna "
        f"{cpu['optuna'] * 1e3:.1f} ms: {cpu['tuner'] / cpu['optuna']:.2f}× (goal ≤ 0.8×)"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
