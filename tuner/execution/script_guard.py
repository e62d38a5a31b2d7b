"""Run a trial's command so that it cannot outlive its worker: ``python -m
tuner.execution.script_guard WORKER_PID COMMAND...``.

The worker starts this guard as the leader of a new process group, and the guard runs the
command in that group. A worker that stops normally ends the group itself (tuner.execution.script);
one that dies at once (SIGKILL, a lost Ray task) cannot, so the guard asks the kernel for a signal
when its parent dies (Linux prctl PR_SET_PDEATHSIG) and then ends the whole group: SIGTERM,
and SIGKILL after a grace. Without it, a script's own children (DataLoader workers, a
subprocess) would run on, orphaned.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

#: prctl's option number for "signal me when my parent dies" (linux/prctl.h).
PR_SET_PDEATHSIG = 1
#: Seconds the group gets between SIGTERM and SIGKILL.
GRACE_SECONDS = 5


def _end_group(*_: object) -> None:
    """SIGTERM every process of the group (not the guard), SIGKILL them after the grace."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    signal.signal(signal.SIGALRM, lambda *_: os.killpg(0, signal.SIGKILL))
    signal.alarm(GRACE_SECONDS)


def main(argv: list[str]) -> int:
    """Run ``argv[1:]`` until it exits, ending its group if worker ``argv[0]`` dies."""
    signal.signal(signal.SIGTERM, _end_group)
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(argv[0]):  # the worker died before the request took effect
        _end_group()
    status = subprocess.call(argv[1:])
    if status < 0:  # killed by a signal: die of the same one, so the worker reads it as such
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
