"""What a finished trial leaves beside its database row: its learning curve, as an artifact.

Every COMPLETE trial gets its learning curve (train loss and validation metrics per epoch) as an
Optuna artifact, which optuna-dashboard shows on the trial's page. The worker is handed a
`TrialRecorder` and calls it before it tells the study the result, and writes the attribute
naming the artifact with the trial's others, in one transaction; `LearningCurveRecorder`
uploads a PNG plot of a few KB, or for trials whose training took less than drawing the plot
costs, the numbers as CSV. A failed upload is logged and never fails the trial.

Where the artifact store lives (`artifact_dir`), the same rule for workers and the dashboard:

1. a SQLite file storage: the folder ``artifacts/`` next to the database file;
2. any other storage (PostgreSQL, in-memory SQLite): ``$TUNER_ARTIFACT_DIR``;
3. else ``$XDG_DATA_HOME/tuner/artifacts`` (else ``~/.local/share/tuner/artifacts``).

Workers write there and the dashboard reads from there, so on a cluster the folder must be on
a file system every node and the dashboard's machine share, with ``TUNER_ARTIFACT_DIR`` set to
it in every worker's environment.
"""

from __future__ import annotations

import csv
import importlib
import logging
import math
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import optuna
from optuna.trial import TrialState

from tuner.storage.rdb import rdb_backend, user_data_dir
from tuner.storage.urls import sqlite_file

if TYPE_CHECKING:
    from optuna.artifacts import FileSystemArtifactStore

logger = logging.getLogger(__name__)

#: What drawing one learning curve costs, in CPU seconds, until this worker has measured it
#: (0.14-0.20 s on a 2-core machine, bench/overhead.py; the plotting libraries' import apart).
CURVE_DRAW_SECONDS = 0.2
#: The plotting modules, imported once per worker before the first drawing is measured.
PLOTTING_MODULES = ("matplotlib.backends.backend_agg", "matplotlib.figure", "PIL.Image")
#: The learning-curve plot's size: small enough for a few KB per trial.
CURVE_FIGSIZE = (4.8, 3.0)
CURVE_DPI = 80

#: A trial's learning curve: one mapping of metric name to value per epoch.
Curve = list[dict[str, Any]]


def artifact_dir(storage: str | optuna.storages.BaseStorage | None) -> Path:
    """The artifact folder for a storage (its URL or the storage itself); see the module doc."""
    url = storage if isinstance(storage, str) else _storage_url(storage)
    # sqlite_file parses SQLite URLs only: a libpq URL with several hosts is no SQLAlchemy URL.
    database = sqlite_file(url) if url is not None else None
    if database is not None:
        return database.expanduser().resolve().parent / "artifacts"
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


class TrialRecorder(Protocol):
    """What a worker needs to record a finished trial beyond its database row (the one thing
    it is handed, so training never depends on how the record is kept or shown)."""

    def record(
        self, trial: optuna.Trial, state: TrialState, curve: Curve, seconds: float, title: str
    ) -> dict[str, Any]:
        """Record a trial that ended in `state` after training `seconds`, under `title` (what
        the worker knows of it in natural units: its optimizer and learning rate); called
        before the study is told (a finished trial takes no more attributes). Returns the
        system attributes that name the record, which the worker writes with the trial's
        others."""

    def finish(self) -> None:
        """Wait for records still being written; the worker calls it before it returns."""


class LearningCurveRecorder:
    """Upload each COMPLETE trial's learning curve to the artifact store of its storage.

    A trial whose training took at least what drawing its plot costs gets a PNG plot; a quicker
    one gets the same numbers as CSV, so that no trial pays more CPU for its picture than for
    its training. What drawing costs is measured: the mean CPU time of this recorder's drawings
    so far (CURVE_DRAW_SECONDS before the first), the one-off import of the plotting libraries
    apart. Other states, an empty curve and any failure upload nothing; a failure is logged
    as a warning.

    The plot is drawn off the trial's path (it cost 0.3–0.8 s a trial on 2 busy cores,
    bench/overhead.py): `record` names the artifact at once (Optuna's upload_artifact, whose
    attribute naming it the worker writes with the trial's others), and one background thread
    draws the PNG and writes it under that artifact's id while the worker trains the next
    trial. Until then the dashboard finds no file for it. `finish` waits for the drawings.
    """

    def __init__(self) -> None:
        self._drawings: queue.Queue[tuple[FileSystemArtifactStore, str, Curve, str]] = queue.Queue()
        self._drawer: threading.Thread | None = None
        self._drawn: tuple[int, float] = (0, 0.0)  # drawings measured, their CPU seconds

    @property
    def drawing_seconds(self) -> float:
        """What drawing one plot costs, in CPU seconds: measured, once a drawing has been."""
        count, seconds = self._drawn
        return seconds / count if count else CURVE_DRAW_SECONDS

    def record(
        self, trial: optuna.Trial, state: TrialState, curve: Curve, seconds: float, title: str
    ) -> dict[str, Any]:
        attributes = _Attributes()
        if state is not TrialState.COMPLETE or not curve:
            return attributes.system_attrs
        try:
            from optuna.artifacts import upload_artifact

            store = artifact_store(trial.storage)
            with tempfile.TemporaryDirectory(prefix="tuner-curve-") as folder:
                stem = Path(folder) / f"learning_curve_trial_{trial.number}"
                if seconds >= self.drawing_seconds:
                    path = stem.with_suffix(".png")
                    path.touch()  # upload_artifact reads it; _LaterDrawing draws the real one
                    store = _LaterDrawing(store, self._draw_later, curve, title)
                else:
                    path = stem.with_suffix(".csv")
                    with open(path, "w", newline="") as table:
                        writer = csv.DictWriter(table, fieldnames=list(curve[-1]))
                        writer.writeheader()
                        writer.writerows(curve)
                upload_artifact(
                    artifact_store=store,
                    file_path=str(path),
                    study_or_trial=trial,
                    storage=attributes,  # type: ignore[arg-type]
                )
        except Exception as error:  # the result matters more than its picture
            _warn(trial.number, error)
            return {}
        return attributes.system_attrs

    def finish(self) -> None:
        self._drawings.join()

    def _draw_later(
        self, store: FileSystemArtifactStore, artifact_id: str, curve: Curve, title: str
    ) -> None:
        if self._drawer is None:
            self._drawer = threading.Thread(target=self._draw, name="curve-plots", daemon=True)
            self._drawer.start()
        self._drawings.put((store, artifact_id, curve, title))

    def _draw(self) -> None:
        for module in PLOTTING_MODULES:  # once a worker: not what each drawing costs
            importlib.import_module(module)
        while True:
            store, artifact_id, curve, title = self._drawings.get()
            try:
                with tempfile.TemporaryDirectory(prefix="tuner-curve-") as folder:
                    path = Path(folder) / "curve.png"
                    started = time.thread_time()  # this thread's CPU: the drawing's own
                    plot_curve(curve, path, title)
                    count, seconds = self._drawn
                    self._drawn = (count + 1, seconds + time.thread_time() - started)
                    with open(path, "rb") as png:
                        store.write(artifact_id, png)
            except Exception as error:
                _warn(title, error)
            finally:
                self._drawings.task_done()


class _Attributes:
    """Takes the attribute Optuna's upload_artifact names the artifact by, the one storage
    call it makes, for the worker to write with the trial's other attributes instead of in a
    transaction of its own."""

    def __init__(self) -> None:
        self.system_attrs: dict[str, Any] = {}

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.system_attrs[key] = value


class _LaterDrawing:
    """An artifact store that takes Optuna's upload of a placeholder and has the PNG drawn
    and written under the same artifact id later (Optuna's ArtifactStore protocol: upload
    names the artifact on the trial, then writes its bytes through the store)."""

    def __init__(
        self,
        store: FileSystemArtifactStore,
        draw_later: Callable[[FileSystemArtifactStore, str, Curve, str], None],
        curve: Curve,
        title: str,
    ) -> None:
        self.store, self.draw_later, self.curve, self.title = store, draw_later, curve, title

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.draw_later(self.store, artifact_id, self.curve, self.title)


def _warn(trial: int | str, error: Exception) -> None:
    logger.warning(
        "%s: learning-curve artifact not uploaded: %s: %s",
        trial if isinstance(trial, str) else f"trial {trial}",
        type(error).__name__,
        error,
    )


def _plotted_metrics(curve: Curve) -> list[str]:
    """Train loss and the validation losses and accuracies (not a landscape's coordinates)."""
    names = [key for key in curve[-1] if key not in ("epoch", "learning_rate")]
    return [name for name in names if name.endswith("loss") or "accuracy" in name]


def plot_curve(curve: Curve, path: Path, title: str) -> None:
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
