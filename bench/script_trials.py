"""What a script trial costs against the same code as a training function, per trial.

The shipped example's code (examples/pytorch/train.py: an MLP on scikit-learn's 8×8 digits
through a DataLoader, its study's search space, 5 epochs, checkpoints each epoch) is tuned
three ways in this one run, each by one `tuner worker` process with one torch thread, each
a fresh study with the example's seed and no pruner (so the same configurations, trained
alike):

- function: ``[workload] name = "train:train"``, the code imported into the worker once;
- script: ``[workload] command = ["python", "trial.py"]``, where trial.py is
  ``train(tuner.current_trial())``: each trial forked from the worker's script server
  (tuner.execution.script_server);
- fresh interpreter: the same script as ``python -u trial.py``, which the server execs
  instead of forking (python with options): a new interpreter that imports torch, tuner and
  scikit-learn per trial, as every script trial started before the fork server.

Per trial, two figures, each with its ratio to the function's: the median of the trials'
recorded wall_seconds (from its claim to its end: sampling, the script or function, its
records), what a trial costs once the worker runs, against the goal of 1.5× at most; and the
span from the first trial's start to the last trial's end over the trial count, which also
charges the worker's one-time costs to its trials (the script server's imports before the
first trial, what it imports after the first for the next) and the work between trials.

    nice -n 10 python bench/script_trials.py [--trials 20] [--repeat 3]

With --repeat N the three run N times, in turn, and the medians of the runs are compared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "pytorch"
#: The script form of the example: the same `train`, handed its trial by the worker.
TRIAL_SCRIPT = "import tuner\nfrom train import train\n\ntrain(tuner.current_trial())\n"
#: How each variant names its workload in the study file.
WORKLOADS = {
    "function": 'name = "train:train"',
    "script": 'command = ["python", "trial.py"]',
    "fresh interpreter": 'command = ["python", "-u", "trial.py"]',
}
#: The script's goal: per trial, at most this many times the function's.
GOAL = 1.5


def study_file(folder: Path, variant: str, trials: int) -> Path:
    """The example beside a study file for `variant`: the example's, with its workload, a
    trial budget of `trials` and no pruner."""
    folder.mkdir(parents=True)
    shutil.copy(EXAMPLE / "train.py", folder / "train.py")
    (folder / "trial.py").write_text(TRIAL_SCRIPT)
    text = (EXAMPLE / "study.toml").read_text()
    text = text.replace('name = "example-pytorch"', f'name = "{variant.replace(" ", "-")}"')
    text = text.replace('name = "train:train"', WORKLOADS[variant])
    text = text.replace("trials = 20", f"trials = {trials}")
    (folder / "study.toml").write_text(text + '\n[pruner]\nname = "none"\n')
    return folder / "study.toml"


def per_trial(folder: Path, variant: str, trials: int) -> tuple[float, float]:
    """(span over trials, median wall_seconds) of one study of `variant`, run by one worker."""
    from tuner.spec import load_spec
    from tuner.storage.rdb import open_storage
    from tuner.study.lifecycle import create_or_resume

    spec = load_spec(study_file(folder / variant.replace(" ", "-"), variant, trials))
    url = f"sqlite:///{folder / 'studies.db'}"
    create_or_resume(spec, open_storage(url))
    env = {**os.environ, "XDG_DATA_HOME": str(folder), "TUNER_STORAGE": ""}
    command = [sys.executable, "-m", "tuner.cli", "worker", spec.name, "--storage", url]
    done = subprocess.run(
        [*command, "--threads", "1"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"the {variant} worker failed:\n{done.stderr[-2000:]}")
    finished = optuna.load_study(study_name=spec.name, storage=url).trials
    states = {trial.state for trial in finished}
    if len(finished) != trials or states != {optuna.trial.TrialState.COMPLETE}:
        raise SystemExit(f"the {variant} study ended with {len(finished)} trials in {states}")
    first = min(trial.datetime_start for trial in finished)
    last = max(trial.datetime_complete for trial in finished)
    span = (last - first).total_seconds() / trials
    return span, statistics.median(trial.user_attrs["wall_seconds"] for trial in finished)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per study")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, in turn")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    figures: dict[str, list[tuple[float, float]]] = {variant: [] for variant in WORKLOADS}
    for run in range(args.repeat):
        for variant in WORKLOADS:
            with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
                figures[variant].append(per_trial(Path(tmp), variant, args.trials))
            span, wall = figures[variant][-1]
            print(f"run {run + 1}, {variant}: median trial {wall:.3f} s, span {span:.3f} s a trial")
    medians = {
        variant: tuple(statistics.median(column) for column in zip(*runs, strict=True))
        for variant, runs in figures.items()
    }
    function_span, function_wall = medians["function"]
    print(f"\n{args.trials} trials a study, one worker, one torch thread, medians of {args.repeat}")
    header = ("seconds per trial", "median trial", "ratio", "span / trials", "ratio")
    print("{:<20}{:>13}{:>8}{:>15}{:>8}".format(*header))
    for variant, (span, wall) in medians.items():
        goal = f"   goal ≤ {GOAL}× per trial" if variant == "script" else ""
        print(
            f"{variant:<20}{wall:>13.3f}{wall / function_wall:>7.2f}×"
            f"{span:>15.3f}{span / function_span:>7.2f}×{goal}"
        )


if __name__ == "__main__":
    main()
