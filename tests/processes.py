"""Processes under a test, read from /proc (Linux): the tests that stop a worker, a driver or
Ray check what is left running, and what listens where."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """`pid` and every process under it (Ray's GCS, raylet, agents and workers are)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (above := parent(int(entry.name))) is not None:
            children.setdefault(above, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def process_name(pid: int) -> str:
    """A process's name; "" if it ended after it was listed (a short-lived helper)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def command_line(pid: int) -> bytes:
    """A process's command line, NUL-separated; b"" if it ended after it was listed."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return None  # ended meanwhile


def worker_processes(driver: int) -> list[int]:
    """The processes under a `tuner run` driver that run tuner's worker loop: on Ray, those
    titled after the worker task; locally, the children of the fork server, a child of the
    driver that is a fork of it (the same command line) or multiprocessing's own."""
    tree = descendants(driver)
    ray_workers = [pid for pid in tree if command_line(pid).startswith(b"ray::_worker_task")]
    servers = [
        pid
        for pid in tree
        if parent(pid) == driver
        and (
            command_line(pid) == command_line(driver)
            or b"multiprocessing.forkserver" in command_line(pid)
        )
    ]
    return ray_workers + [pid for pid in tree if parent(pid) in servers]


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def wait_while_progressing(
    processes: Iterable[subprocess.Popen],
    progress: Callable[[], object],
    stalled_after: float = 300.0,
) -> None:
    """Wait for every process to exit, for as long as `progress()` (finished trials, say)
    keeps changing: a loaded machine only makes the wait longer, while work that stops moving
    for `stalled_after` seconds fails the test instead of hanging it."""
    waiting = list(processes)
    last, moved = progress(), time.monotonic()
    while any(process.poll() is None for process in waiting):
        now = progress()
        if now != last:
            last, moved = now, time.monotonic()
        elif time.monotonic() - moved > stalled_after:
            raise AssertionError(f"no progress for {stalled_after:.0f} s (stuck at {now!r})")
        time.sleep(0.5)
