"""The learning-curve PNG is drawn off the trial's path: attached at once, drawn by a thread."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tuner.storage import artifacts
from tuner.storage import optuna_internals as internals
from tuner.storage.artifacts import LearningCurveRecorder
from tuner.storage.rdb import open_storage


def test_the_plot_is_drawn_by_a_background_thread_under_the_id_the_trial_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'studies.db'}")
    study = optuna.create_study(storage=storage)
    drawn_on: list[str] = []
    real_plot = artifacts.plot_curve

    def plot_and_note_the_thread(*args: object) -> None:
        drawn_on.append(threading.current_thread().name)
        real_plot(*args)

    monkeypatch.setattr(artifacts, "plot_curve", plot_and_note_the_thread)
    recorder = LearningCurveRecorder()
    curve = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e} for e in (1, 2, 3)]
    for _ in range(3):
        trial = study.ask()
        named = recorder.record(trial, TrialState.COMPLETE, curve, seconds=5.0, title="trial")
        # The worker writes the attribute naming the artifact with the trial's others.
        storage.set_trial_attrs(internals.trial_id(trial), {}, named)
        study.tell(trial, 0.0)  # told while its plot may still be drawing
    recorder.finish()

    assert drawn_on == ["curve-plots"] * 3  # never the worker's own thread
    for trial in study.get_trials():
        (key,) = [key for key in trial.system_attrs if key.startswith("artifacts:")]
        meta = json.loads(trial.system_attrs[key])
        assert meta["filename"] == f"learning_curve_trial_{trial.number}.png"
        assert meta["mimetype"] == "image/png"
        png = (tmp_path / "artifacts" / meta["artifact_id"]).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_a_curve_is_drawn_for_a_trial_that_trained_longer_than_drawing_costs(
    tmp_path: Path,
) -> None:
    """PNG or CSV is what drawing costs, as measured by this recorder's own drawings, against
    the trial's training: no trial pays more CPU for its picture than for its training."""
    storage = open_storage(f"sqlite:///{tmp_path / 'studies.db'}")
    study = optuna.create_study(storage=storage)
    recorder = LearningCurveRecorder()
    curve = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e} for e in (1, 2, 3)]

    def recorded(seconds: float) -> str:
        trial = study.ask()
        named = recorder.record(trial, TrialState.COMPLETE, curve, seconds, "trial")
        recorder.finish()  # the drawing, if any, measured
        study.tell(trial, 0.0)
        (meta,) = [json.loads(value) for value in named.values()]
        return Path(meta["filename"]).suffix

    assert recorded(math.inf) == ".png"  # the first drawing: its cost is measured
    measured = recorder.drawing_seconds
    assert 0 < measured < math.inf
    assert recorded(measured / 2) == ".csv"
    assert recorded(2 * recorder.drawing_seconds) == ".png"
