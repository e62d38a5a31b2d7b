"""Which backend runs a study's workers, Ray or local processes, and the calls to both.

Ray is the engine for clusters; on one machine the same worker loop runs in local processes
(tuner.execution.local), which start in a fraction of a private Ray's time and memory.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from tuner.spec import ExecutionSpec, StudySpec

if TYPE_CHECKING:
    from tuner.execution.worker import WorkerSummary

#: Where Ray reads a cluster address from; a run joins only the cluster it is given.
RAY_ADDRESS_VARIABLE = "RAY_ADDRESS"


def uses_ray(execution: ExecutionSpec) -> bool:
    """``backend``, where ``auto`` is Ray for a named cluster or where this process already
    runs Ray (a notebook's or a test's `ray.init`), local processes otherwise."""
    if execution.backend != "auto":
        return execution.backend == "ray"
    ray = sys.modules.get("ray")  # not imported for the question: that alone costs 0.3 s
    return bool(execution.ray_address) or (ray is not None and ray.is_initialized())


def warm_up(execution: ExecutionSpec) -> None:
    """For local workers, start the fork server they are forked from: first thing, before a
    database is opened or a thread started (tuner.execution.local.warm_up)."""
    if not uses_ray(execution):
        from tuner.execution.local import warm_up as start_fork_server

        start_fork_server()


def prepare(execution: ExecutionSpec, say: Callable[[str], None] = print) -> None:
    """Before anything is written: attach to the cluster or start a local Ray and check it
    can hold the workers; or check that this machine can (the fork server is already up:
    `warm_up`). A ``RAY_ADDRESS`` in the environment names no cluster for a run: `say` notes
    it once.

    Raises:
        ClusterUnreachableError: the cluster address does not answer.
        ExecutionError: a local Ray did not start.
        SpecError: no node (no local machine) can hold a worker's CPUs or GPUs.
    """
    if not execution.ray_address and os.environ.get(RAY_ADDRESS_VARIABLE):
        say(
            f"note: {RAY_ADDRESS_VARIABLE}={os.environ[RAY_ADDRESS_VARIABLE]} is ignored: this "
            "run stays on this machine; to run on that cluster, pass --ray-address"
        )
    if uses_ray(execution):
        from tuner.execution.ray import start_ray

        start_ray(execution)
    else:
        from tuner.execution import local

        local.check_resources(execution, local.machine_gpus())


def run_workers(
    spec: StudySpec,
    storage_url: str,
    run_id: str,
    timeout: float | None,
    on_tick: Callable[[], None],
) -> list[WorkerSummary]:
    """Run the spec's workers to the end of its budget on its backend (see `uses_ray`)."""
    if uses_ray(spec.execution):
        from tuner.execution.ray import run_on_ray

        return run_on_ray(spec, storage_url, run_id, timeout, on_tick)
    from tuner.execution.local import run_locally

    return run_locally(spec, storage_url, run_id, timeout, on_tick)
