"""A trial's checkpoint: its latest training state on disk, so that a re-run resumes from it.

A trial whose worker died, or that was interrupted, is re-run as a new trial with the same
parameters (tuner.study.lifecycle); every trial of that line (the first one and its re-runs)
writes to one file named after the first, its *origin*, in the study's artifact store
(tuner.storage.artifacts.artifact_dir)::

    <artifacts>/checkpoints/<study>/trial_<origin>.pt         the latest checkpoint of a line
    <artifacts>/checkpoints/<study>/kept/trial_<number>.pt    a finished trial's, kept for the best

A checkpoint is written to a temporary file in the same folder and renamed over the last one,
so a reader finds the previous checkpoint or the new one whole, never a half-written file, even
when the writer is killed mid-write. Each file names its study, origin and workload: one that
belongs elsewhere, or cannot be read, is named in a warning and not resumed from.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from tuner.storage.artifacts import artifact_dir

logger = logging.getLogger(__name__)

#: The envelope's version: a file of another version is not resumed from.
CHECKPOINT_FORMAT = 1
#: The system attribute naming the first trial of a re-run's line (tuner.study.lifecycle
#: .interrupt sets it; Optuna's retry of a dead worker's trial copies it, and names the first
#: trial it retried ``failed_trial``).
ORIGIN_KEY = "tuner:origin"


def origin_of(number: int, system_attrs: dict[str, Any]) -> int:
    """The first trial of the line trial `number` belongs to: itself unless it is a re-run."""
    return int(system_attrs.get(ORIGIN_KEY, system_attrs.get("failed_trial", number)))


def one_line(error: BaseException) -> str:
    """An error as one line of a warning (torch's load errors span several)."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def checkpoint_folder(storage: str | optuna.storages.BaseStorage | None, study: str) -> Path:
    """Where a study's checkpoints live (not created)."""
    return artifact_dir(storage) / "checkpoints" / study


def kept_checkpoint(
    storage: str | optuna.storages.BaseStorage | None, study: str, number: int
) -> Path | None:
    """The checkpoint kept for finished trial `number` (``keep_best_checkpoint``), or None."""
    path = checkpoint_folder(storage, study) / "kept" / f"trial_{number}.pt"
    return path if path.is_file() else None


def discard_kept(
    storage: str | optuna.storages.BaseStorage | None, study: str, numbers: set[int]
) -> None:
    """Delete the kept checkpoints of finished trials `numbers` (those that are not the best)."""
    folder = checkpoint_folder(storage, study) / "kept"
    for number in numbers:
        (folder / f"trial_{number}.pt").unlink(missing_ok=True)


@dataclass(frozen=True)
class Checkpoint:
    """What a resumed trial gets back: the state saved after `epoch` epochs by trial `trial`,
    and the learning curve up to that epoch."""

    trial: int
    epoch: int
    state: Any
    curve: list[dict[str, Any]]


class CheckpointFile:
    """The checkpoint of one line of trials (see the module doc).

    A failure to write is one warning, after which this trial writes no more checkpoints and
    trains on; a failure to read is one warning naming the file, and the trial starts afresh.
    """

    def __init__(self, folder: Path, study: str, origin: int, workload: str):
        self.folder, self.study, self.origin, self.workload = folder, study, origin, workload
        self.path = folder / f"trial_{origin}.pt"
        self.broken = False  # a write failed: this trial trains on without checkpoints
        self._writer: threading.Thread | None = None

    def save(
        self,
        trial: int,
        epoch: int,
        state: Any,
        curve: list[dict[str, Any]],
        background: bool = False,
    ) -> bool:
        """Write the checkpoint of `trial` after `epoch` epochs; False if it was not written.

        In the `background`, the state is copied (training goes on changing its tensors) and
        serialised and written by a thread while training continues: on a GPU an epoch is short
        and the write, fsync included, would otherwise stall it. One write at a time, in order.
        """
        self.wait()
        if self.broken:
            return False
        envelope = {
            "format": CHECKPOINT_FORMAT,
            "study": self.study,
            "origin": self.origin,
            "workload": self.workload,
            "trial": trial,
            "epoch": epoch,
            "curve": [point for point in curve if point["epoch"] <= epoch],
            "state": state,
        }
        if not background:
            return self._write(trial, envelope)
        envelope = copy.deepcopy(envelope)
        self._writer = threading.Thread(
            target=self._write, args=(trial, envelope), name="checkpoint", daemon=True
        )
        self._writer.start()
        return True

    def wait(self) -> None:
        """Wait for the checkpoint being written in the background, if one is."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None

    def _write(self, trial: int, envelope: dict[str, Any]) -> bool:
        import torch

        temporary = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=self.path.name, dir=self.folder)
            with os.fdopen(handle, "wb") as file:
                torch.save(envelope, file)
                file.flush()
                os.fsync(file.fileno())  # on disk before it replaces the last good one
            os.replace(temporary, self.path)
            return True
        except OSError as error:
            self.broken = True
            logger.warning(
                "trial %d: checkpoint not written to %s (%s); it trains on without checkpoints",
                trial,
                self.folder,
                error.strerror or error,
            )
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)
            return False

    def load(self) -> Checkpoint | None:
        """The line's last checkpoint, or None: there is none, or it is not this line's or
        cannot be read (then a warning names it and why)."""
        self.wait()
        if not self.path.is_file():
            return None
        import torch

        try:
            # Not weights_only: a training function's state may be any torch.save-able object,
            # and the file is the study's own, in its artifact store.
            envelope = torch.load(self.path, map_location="cpu", weights_only=False)
            why = self._foreign(envelope)
        except Exception as error:  # a corrupt file is any error unpickling can raise
            why = f"unreadable ({one_line(error)})"
        if why is not None:
            logger.warning(
                "checkpoint %s not resumed from: %s; starting at epoch 1", self.path, why
            )
            return None
        return Checkpoint(
            envelope["trial"], envelope["epoch"], envelope["state"], envelope["curve"]
        )

    def _foreign(self, envelope: Any) -> str | None:
        """Why `envelope` is not a checkpoint of this line, or None if it is."""
        if not isinstance(envelope, dict) or envelope.get("format") != CHECKPOINT_FORMAT:
            return "not a tuner checkpoint of this version"
        expected = {"study": self.study, "origin": self.origin, "workload": self.workload}
        for key, value in expected.items():
            if envelope.get(key) != value:
                return f"written for {key} {envelope.get(key)!r}, not {value!r}"
        return None

    def discard(self) -> None:
        """Delete the line's checkpoint (its trial finished), and any temporary file a writer
        killed mid-write left beside it."""
        self.wait()
        for path in self.folder.glob(f"{self.path.name}*"):
            path.unlink(missing_ok=True)

    def keep(self, number: int) -> None:
        """Keep the checkpoint as finished trial `number`'s (see kept_checkpoint)."""
        self.wait()
        if not self.path.is_file():
            return
        kept = self.folder / "kept"
        try:
            kept.mkdir(exist_ok=True)
            os.replace(self.path, kept / f"trial_{number}.pt")
        except OSError as error:
            logger.warning("trial %d: checkpoint not kept: %s", number, error)
