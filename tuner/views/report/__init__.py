"""`tuner report STUDY --out DIR`: a static report of one study, readable without a server.

The study is read once into a `StudySnapshot` (snapshot.py) that every part reads:
importances (tuner.study.importance: PED-ANOVA beside fANOVA), the figures (figures.py, and
landscape.py for the landscape workloads) and the page (page.py). matplotlib draws PNG files
and one self-contained ``index.html`` shows them with the study's facts and its top trials:

- ``best_by_optimizer.png``: the best validation metric of each optimizer type;
- ``learning_curves.png``: the per-epoch curves of the best trial of each optimizer type (the
  seeds' "Optimizer Comparison on MNIST" figure);
- ``landscape.png`` (landscape workloads only): the optimizers' paths over the surface;
- ``history.png``: each trial's value by trial number, best so far, pruned and failed trials;
- ``importance.png``: PED-ANOVA and fANOVA parameter importances, or why none is shown.

Everything is read from the study database: the trials' ``config`` and ``curve`` user
attributes and the study's ``spec`` (docs/reference.md, "Where studies live", says what each
trial records).
"""

from __future__ import annotations

import os
from pathlib import Path

from tuner.errors import EmptyStudyError, TunerError
from tuner.study.importance import parameter_importances
from tuner.study.results import count_sentence, open_study
from tuner.views.report import figures as draw
from tuner.views.report.landscape import draws, landscape
from tuner.views.report.page import TOP_TRIALS, page
from tuner.views.report.snapshot import StudySnapshot

__all__ = ["FIGURES", "TOP_TRIALS", "StudySnapshot", "write_report"]

#: The figures a report may hold; one a report did not draw is removed from its folder.
FIGURES = ("best_by_optimizer", "learning_curves", "landscape", "history", "importance")


def write_report(study: str, out_dir: Path, storage: str | None = None) -> Path:
    """Write the study's figures and ``index.html`` into `out_dir`; return the HTML's path.

    Args:
        study: the study's name.
        out_dir: the folder for the report (created if missing; a previous report's files in
            it are replaced).
        storage: a storage URL; else ``TUNER_STORAGE``, else the default SQLite file.

    Raises:
        StudyNotFoundError: no such study; the message lists the studies there are.
        EmptyStudyError: no trial has completed yet; nothing is written.
        TunerError: `out_dir` is a file, or cannot be created or written to.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():  # before anything is read or drawn
        raise TunerError(f"--out {out_dir} is a file: give a folder for index.html and the PNGs")
    loaded, url = open_study(study, storage)
    snapshot = StudySnapshot.read(loaded, url)
    if not snapshot.complete:
        raise EmptyStudyError(
            f"study {study!r} has no completed trial to report on yet "
            f"({count_sentence(snapshot.trials)}); run it first with tuner run STUDY_FILE"
        )
    importances = parameter_importances(snapshot.trials, snapshot.direction, snapshot.metric)
    colours = draw.colours(snapshot)
    _writable_folder(out_dir)
    figures = {
        "best_by_optimizer": draw.best_by_optimizer(
            snapshot, colours, out_dir / "best_by_optimizer.png"
        ),
        "learning_curves": draw.learning_curves(snapshot, colours, out_dir / "learning_curves.png"),
    }
    if draws(snapshot):
        figures["landscape"] = landscape(snapshot, colours, out_dir / "landscape.png")
    figures["history"] = draw.history(snapshot, colours, out_dir / "history.png")
    figures["importance"] = draw.importances(snapshot, importances, out_dir / "importance.png")
    for name in set(FIGURES) - set(figures):
        (out_dir / f"{name}.png").unlink(missing_ok=True)
    index = out_dir / "index.html"
    index.write_text(page(snapshot, figures, importances), encoding="utf-8")
    return index


def _writable_folder(folder: Path) -> None:
    """Create `folder` if missing; TunerError naming it and why where it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TunerError(f"--out {folder}: cannot create the folder: {error.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TunerError(f"--out {folder}: the folder is not writable; give another with --out")
