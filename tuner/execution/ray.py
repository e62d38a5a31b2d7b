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

from tuner.errors import ClusterUnreachableError, SpecError
from tuner.execution.worker import WorkerSummary, run_worker
from tuner.spec import ExecutionSpec, StudySpec

#: Ray retries a worker task whose process died (SIGKILL, lost node) this many times.
WORKER_RETRIES = 3
#: Seconds cancelled workers get to record their trials as FAIL before they are killed.
CANCEL_GRACE_SECONDS = 5.0
#: Seconds the driver waits for a cluster address to answer before saying it does not.
RAY_CONNECT_SECONDS = 10.0


def _worker_task(
    spec_data: dict[str, Any],
    storage_url: str,
    timeout: float | None,
    run_id: str,
    index: int,
    threads: int,
) -> WorkerSummary:
    node = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
    spec = StudySpec.model_validate(spec_data)
    return run_worker(
        spec, storage_url, timeout, f"{run_id}-{index}", threads, node, index, run=run_id
    )


def gpus_per_worker(requested: float | str, workers: int) -> float:
    """Resolve ``auto``: a share of the cluster's GPUs (at most one each), or 0 without GPUs."""
    if requested != "auto":
        return float(requested)
    gpus = ray.cluster_resources().get("GPU", 0.0)
    return min(1.0, gpus / workers) if gpus else 0.0


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or taskset's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpus_per_worker(execution: ExecutionSpec) -> float:
    """The CPUs each worker holds: ``cpus_per_trial``, or on a local machine an equal share of
    its CPUs when that is more, so that no CPU is left idle (one worker on 2 cores trains
    with both). On a cluster, other studies may want the nodes' CPUs: the spec's number."""
    if execution.ray_address:
        return execution.cpus_per_trial
    # A Ray started before (by a notebook, a test) has the CPUs it was given.
    cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else usable_cpus()
    return max(execution.cpus_per_trial, float(cpus // execution.workers))


def _probe(address: str) -> None:
    """Refuse a cluster address that does not answer within RAY_CONNECT_SECONDS: Ray's own
    connection retries run for minutes, printing C++ warnings, before giving up."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_SECONDS).close()
    except ValueError:
        raise SpecError(
            f"[execution] ray_address {address!r}: expected HOST:PORT, e.g. head-node:6379"
        ) from None
    except OSError as error:
        raise ClusterUnreachableError(
            f"[execution] ray_address {address}: no Ray cluster answers there "
            f"({error.strerror or error}); start one with `ray start --head --port=PORT`, or "
            "leave ray_address out for a local one"
        ) from None


def _check_resources(execution: ExecutionSpec) -> None:
    """Refuse a worker that no node of the cluster can hold: Ray would wait for it forever."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    wanted = {"CPU": cpus_per_worker(execution)}
    if execution.gpus_per_trial != "auto":
        wanted["GPU"] = execution.gpus_per_trial
    for resource, amount in wanted.items():
        most = max((node.get(resource, 0.0) for node in nodes), default=0.0)
        if amount > most:
            key = "gpus_per_trial" if resource == "GPU" else "cpus_per_trial"
            where = "this machine has" if not execution.ray_address else "its largest node has"
            raise SpecError(
                f"[execution] {key} = {amount:g}, but {where} {most:g} {resource}s: "
                + ("set 0 (CPU only) or 'auto'" if resource == "GPU" else f"set at most {most:g}")
            )


def start_ray(execution: ExecutionSpec) -> None:
    """Attach to the cluster at ``ray_address``, or start a local Ray, and check that it can
    run the workers; before anything is written, so a mistake leaves no study behind.

    A local Ray runs its workers at niceness 0 (Ray's default, 15, made a worker's epoch up to
    1.4× slower than the same loop outside Ray on a machine with other load); on a cluster
    the niceness is what ``ray start`` was given (``RAY_worker_niceness=0 ray start …``).

    Raises:
        ClusterUnreachableError: the cluster address does not answer.
        SpecError: no node can hold a worker's CPUs or GPUs.
    """
    if not ray.is_initialized():
        if execution.ray_address:
            _probe(execution.ray_address)
            ray.init(
                address=execution.ray_address, logging_level=logging.WARNING, log_to_driver=False
            )
        else:
            cpus = max(usable_cpus(), round(execution.workers * cpus_per_worker(execution)))
            ray.init(
                num_cpus=cpus,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
                _system_config={"worker_niceness": 0},
            )
    _check_resources(execution)


def run_on_ray(
    spec: StudySpec,
    storage_url: str,
    run_id: str,
    timeout: float | None,
    on_tick: Callable[[], None],
    tick_seconds: float = 0.5,
) -> list[WorkerSummary]:
    """Run the spec's workers on Ray until all have finished; call `on_tick` while waiting.
    `timeout` (seconds) counts from the run's first trial (see run_worker).

    On KeyboardInterrupt the worker tasks are cancelled before the exception propagates.
    """
    execution = spec.execution
    start_ray(execution)
    cpus = cpus_per_worker(execution)
    task = ray.remote(
        num_cpus=cpus,
        num_gpus=gpus_per_worker(execution.gpus_per_trial, execution.workers),
        max_retries=WORKER_RETRIES,
    )(_worker_task)
    # Torch threads follow the CPUs the worker holds (Ray sets OMP_NUM_THREADS to them too).
    threads = max(1, int(cpus))
    spec_data = spec.to_dict()
    pending = [
        task.remote(spec_data, storage_url, timeout, run_id, index, threads)
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
