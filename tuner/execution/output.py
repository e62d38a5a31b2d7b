"""What the user's code printed, kept per trial as artifacts (the dashboard lists them).

A script's stdout and stderr go to files (tuner.execution.script); a training function runs
inside the worker, so what it writes to ``sys.stdout`` and ``sys.stderr`` is teed: it still
reaches the worker's terminal (or Ray's log stream), and its tail, at most `OUTPUT_LIMIT`
characters a stream, is kept. Either way a failed trial's reason ends with its last lines.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import tempfile
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

#: Characters of each stream a training function's trial keeps (its tail past the limit).
OUTPUT_LIMIT = 1_000_000
#: Lines of output that end a failed trial's reason.
TAIL_LINES = 20


class Tail:
    """The last `limit` characters written to a stream (earlier ones are dropped)."""

    def __init__(self, limit: int = OUTPUT_LIMIT):
        self.limit, self.size, self.cut = limit, 0, False
        self._chunks: deque[str] = deque()

    def add(self, text: str) -> None:
        self._chunks.append(text)
        self.size += len(text)
        while self.size - len(self._chunks[0]) >= self.limit:  # whole chunks first: cheap
            self.size -= len(self._chunks.popleft())
            self.cut = True

    def text(self) -> str:
        text = "".join(self._chunks)
        if len(text) > self.limit:
            text, self.cut = text[-self.limit :], True
        return text


class _Tee(io.TextIOBase):
    """A text stream that writes through to `original` and into each of `tails`."""

    def __init__(self, original: TextIO, *tails: Tail):
        self.original, self.tails = original, tails

    def write(self, text: str) -> int:
        self.original.write(text)
        for tail in self.tails:
            tail.add(text)
        return len(text)

    def flush(self) -> None:
        self.original.flush()

    def writable(self) -> bool:
        return True


class Captured:
    """A training function's output: each stream's tail, and both interleaved as written."""

    def __init__(self) -> None:
        self.stdout, self.stderr, self.both = Tail(), Tail(), Tail()

    def last_lines(self, count: int = TAIL_LINES) -> str:
        """The last lines printed, on either stream, as they came."""
        return "\n".join(self.both.text().splitlines()[-count:])


@contextlib.contextmanager
def captured() -> Iterator[Captured]:
    """Tee ``sys.stdout`` and ``sys.stderr`` into a `Captured` while the block runs."""
    output = Captured()
    with (
        contextlib.redirect_stdout(_Tee(sys.stdout, output.stdout, output.both)),
        contextlib.redirect_stderr(_Tee(sys.stderr, output.stderr, output.both)),
    ):
        yield output


def keep_captured(trial: optuna.Trial, output: Captured) -> None:
    """Keep a function trial's output as the artifacts ``trial_N_stdout.txt`` and
    ``trial_N_stderr.txt`` (as a script's), each starting with a line saying if it was cut."""
    with tempfile.TemporaryDirectory(prefix="tuner-output-") as folder:
        paths = []
        for name, tail in (("stdout", output.stdout), ("stderr", output.stderr)):
            text = tail.text()
            if tail.cut:
                text = f"[the first part was dropped: the last {tail.limit} characters]\n{text}"
            path = Path(folder) / f"trial_{trial.number}_{name}.txt"
            path.write_text(text, encoding="utf-8")
            paths.append(path)
        keep_files(trial, paths)


def keep_files(trial: optuna.Trial, paths: list[Path]) -> None:
    """Upload the non-empty files as the trial's artifacts (what the dashboard lists); a
    failure to do so is logged, never the trial's failure."""
    from optuna.artifacts import upload_artifact

    from tuner.storage.artifacts import artifact_store

    try:
        store = artifact_store(trial.storage)
        for path in paths:
            if path.stat().st_size:
                upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    except Exception as error:
        logger.warning("trial %d: its output was not kept: %s", trial.number, error)
