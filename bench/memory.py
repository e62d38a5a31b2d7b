"""Memory of a local two-worker `tuner run` against plain Optuna with two processes.

Both train the same Rosenbrock trials (the quickstart's, 100 steps an epoch) on a SQLite
file, two processes at a time, and are measured the same way in one run of this script: the
peak, over the run, of the summed proportional set size (PSS, /proc/PID/smaps_rollup) of
every process of the command's tree, sampled every 50 ms (psutil). PSS counts a page shared by N
processes as 1/N in each: what the processes together cost the machine, where the sum of
resident sizes would count torch's pages once per process that maps them (tuner's workers
share them with the fork server they were forked from; plain Optuna's processes each load
their own).

- tuner: `tuner run studies/quickstart.toml --workers 2` on its default backend for one
  machine (local processes), from launch to exit: the driver, the fork server, two workers,
  multiprocessing's resource tracker. With --ray, also on a private Ray (backend = "ray").
- plain Optuna: a parent that creates the study and starts two processes (multiprocessing's
  spawn, as a hand-written script would), each importing torch and calling
  `study.optimize` with an objective that trains the same Rosenbrock steps with torch.optim.

    python bench/memory.py [--trials 40] [--repeat 2] [--ray]

Goal (issue 21): tuner at most 1.3x plain Optuna.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil  # Ray's dependency: the processes' memory, read from /proc

ROOT = Path(__file__).parent.parent
QUICKSTART = ROOT / "studies" / "quickstart.toml"

#: The plain Optuna peer: a parent, two processes each running study.optimize.
PLAIN_OPTUNA = """
import multiprocessing, sys, optuna

def objective(trial):
    import torch
    lr = trial.suggest_float("learning_rate", 1e-5, 1e-2, log=True)
    point = torch.tensor([-1.0, 1.0], requires_grad=True)
    optimizer = torch.optim.Adam([point], lr=lr)
    for _ in range(1000):
        optimizer.zero_grad()
        loss = (1 - point[0]) ** 2 + 100 * (point[1] - point[0] ** 2) ** 2
        loss.backward()
        optimizer.step()
    return float(loss)

def work(url, trials):
    import torch
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="plain", storage=url)
    study.optimize(objective, n_trials=trials)

if __name__ == "__main__":
    url, trials = sys.argv[1], int(sys.argv[2])
    optuna.create_study(study_name="plain", storage=url)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=work, args=(url, trials // 2)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    sys.exit(max(worker.exitcode for worker in workers))
"""


def _pss_bytes(process: psutil.Process) -> int:
    try:
        return process.memory_full_info().pss
    except psutil.Error:  # ended meanwhile
        return 0


def peak_pss(command: list[str], folder: Path) -> tuple[float, int]:
    """(peak summed PSS in MiB, most processes seen at once) while `command` runs."""
    process = subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL)
    root = psutil.Process(process.pid)
    peak, most = 0, 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak, most
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break  # the command has ended
            peak = max(peak, sum(_pss_bytes(member) for member in tree))
            most = max(most, len(tree))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    status = process.wait()
    done.set()
    sampler.join()
    if status != 0:
        raise SystemExit(f"{command[:4]} exited {status}")
    return peak / 2**20, most


def tuner_command(url: str, trials: int, backend: str) -> list[str]:
    return [
        *(sys.executable, "-m", "tuner.cli", "run", str(QUICKSTART), "--storage", url),
        *("--trials", str(trials), "--workers", "2", "--set", f"execution.backend='{backend}'"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, alternated")
    parser.add_argument("--ray", action="store_true", help="also measure tuner on Ray")
    args = parser.parse_args()
    tools = ["optuna", "local", *(["ray"] if args.ray else [])]
    peaks: dict[str, list[float]] = {tool: [] for tool in tools}
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="tuner-memory-") as scratch:
        for repeat in range(args.repeat):
            for tool in tools:
                folder = Path(scratch) / f"{tool}-{repeat}"
                folder.mkdir()
                url = f"sqlite:///{folder / 'studies.db'}"
                if tool == "optuna":  # a file: spawn re-imports the script's functions
                    script = folder / "plain_optuna.py"
                    script.write_text(PLAIN_OPTUNA)
                    command = [sys.executable, str(script), url, str(args.trials)]
                else:
                    command = tuner_command(url, args.trials, tool)
                peak, counts[tool] = peak_pss(command, folder)
                peaks[tool].append(peak)
    median = {tool: statistics.median(values) for tool, values in peaks.items()}
    for tool in tools:
        name = "plain Optuna, 2 processes" if tool == "optuna" else f"tuner, {tool} backend"
        ratio = median[tool] / median["optuna"]
        print(
            f"{name:28} peak PSS {median[tool]:7.0f} MiB ({counts[tool]} processes): "
            f"{ratio:.2f}x plain Optuna" + ("  (goal <= 1.3x)" if tool == "local" else "")
        )


if __name__ == "__main__":
    main()
