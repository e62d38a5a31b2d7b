"""What each worker holds and how a lost one is treated: the same on Ray and locally.

Standard library only: the command imports it before anything heavy (tuner.execution.local).
"""

from __future__ import annotations

import ctypes
import os
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuner.spec import ExecutionSpec

#: A worker whose process died (SIGKILL, a lost node, out of memory) is started again this
#: many times; its trial is retried by whoever claims next (heartbeats).
WORKER_RETRIES = 3
#: Seconds stopped workers get to record their trials as interrupted before they are killed.
CANCEL_GRACE_SECONDS = 5.0
#: prctl's option number for "signal me when my parent dies" (linux/prctl.h).
PR_SET_PDEATHSIG = 1


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or taskset's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpus_per_worker(execution: ExecutionSpec, machine_cpus: int) -> float:
    """The CPUs each worker holds: ``cpus_per_trial``, or on one machine (of `machine_cpus`)
    an equal share of its CPUs when that is more, so that no CPU is left idle (one worker on
    2 cores trains with both). On a cluster, other studies may want the nodes' CPUs: the
    spec's number."""
    if execution.ray_address:
        return execution.cpus_per_trial
    return max(execution.cpus_per_trial, float(machine_cpus // execution.workers))


def torch_threads(cpus: float) -> int:
    """The torch CPU threads of a worker holding `cpus` CPUs."""
    return max(1, int(cpus))


def gpus_per_worker(requested: float | str, workers: int, gpus: float) -> float:
    """Resolve ``auto``: a share of the `gpus` there are (at most one each), or 0 without."""
    if requested != "auto":
        return float(requested)
    return min(1.0, gpus / workers) if gpus else 0.0


def dies_with(parent: int, sig: signal.Signals) -> bool:
    """Ask Linux for `sig` when this process's parent (`parent`) dies, so that a worker or a
    trial does not outlive what started it; False if the parent has died already (before the
    request took effect)."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, sig)
    return os.getppid() == parent
