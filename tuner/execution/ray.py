"""Launch the worker loop as long-lived Ray tasks: one per worker, resources from Ray.

The only module that imports ray. Without a cluster address a private local instance is
started; with one (``HOST:6379``) the driver attaches and Ray places workers on its nodes.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import ray

from tuner.execution.worker import WorkerSummary, run_worker
from tuner.spec import StudySpec

#: Ray retries a worker task whose process died (SIGKILL, lost node) this many times.
WORKER_RETRIES = 3
#: Seconds cancelled workers get to record their trials as FAIL before they are killed.
CANCEL_GRACE_SECONDS = 5.0


def _worker_task(
    spec_data: dict[str, Any],
    storage_url: str,
    deadline: float | None,
    run_id: str,
    index: int,
    threads: int,
) -> WorkerSummary:
    node = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
    spec = StudySpec.model_validate(spec_data)
    return run_worker(spec, storage_url, deadline, f"{run_id}-{index}", threads, node, index)


def gpus_per_worker(requested: float | str, workers: int) -> float:
    """Resolve ``auto``: a share of the cluster's GPUs (at most one each), or 0 without GPUs."""
    if requested != "auto":
        return float(requested)
    gpus = ray.cluster_resources().get("GPU", 0.0)
    return min(1.0, gpus / workers) if gpus else 0.0


def run_on_ray(
    spec: StudySpec,
    storage_url: str,
    run_id: str,
    deadline: float | None,
    on_tick: Callable[[], None],
    tick_seconds: float = 0.5,
) -> list[WorkerSummary]:
    """Run the spec's workers on Ray until all have finished; call `on_tick` while waiting.

    On KeyboardInterrupt the worker tasks are cancelled before the exception propagates.
    """
    execution = spec.execution
    if not ray.is_initialized():
        if execution.ray_address:
            ray.init(
                address=execution.ray_address, logging_level=logging.WARNING, log_to_driver=False
            )
        else:
            cpus = max(os.cpu_count() or 1, round(execution.workers * execution.cpus_per_trial))
            ray.init(
                num_cpus=cpus,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
    task = ray.remote(
        num_cpus=execution.cpus_per_trial,
        num_gpus=gpus_per_worker(execution.gpus_per_trial, execution.workers),
        max_retries=WORKER_RETRIES,
    )(_worker_task)
    threads = max(1, int(execution.cpus_per_trial))
    spec_data = spec.to_dict()
    pending = [
        task.remote(spec_data, storage_url, deadline, run_id, index, threads)
        for index in range(execution.workers)
    ]
    refs = list(pending)
    try:
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=tick_seconds)
            on_tick()
        return ray.get(refs)
    except BaseException:
        # A polite cancel first lets each worker tell its trial FAIL; then force the rest.
        for ref in refs:
            ray.cancel(ref)
        _, stuck = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_SECONDS)
        for ref in stuck:
            ray.cancel(ref, force=True)
        raise
