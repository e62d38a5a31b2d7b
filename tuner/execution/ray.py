"""Launch the worker loop as long-lived Ray tasks: one per worker, resources from Ray.

The only module that imports ray. The backend for clusters, and on one machine where
``[execution] backend = "ray"`` (tuner.execution.backend): without a cluster address a
private local instance is started, reachable from this machine only (start_local_ray); with
one (``HOST:6379``) the driver attaches and Ray places workers on its nodes, bound where that
cluster was started.
Ray failing under a study ends it with one line (ExecutionError), its trials re-run on resume.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray
import ray.exceptions
from ray._private import ray_constants
from ray._private.authentication import authentication_token_setup as ray_auth_setup

from tuner.errors import ClusterUnreachableError, ExecutionError, SpecError, TunerError
from tuner.execution.resources import (
    CANCEL_GRACE_SECONDS,
    WORKER_RETRIES,
    cpus_per_worker,
    gpus_per_worker,
    torch_threads,
    usable_cpus,
)
from tuner.execution.shipping import SHIP_EXCLUDES, code_folder, remap
from tuner.execution.worker import WorkerSummary, run_worker
from tuner.spec import ExecutionSpec, StudySpec

#: Seconds the driver waits for a cluster address to answer before saying it does not.
RAY_CONNECT_SECONDS = 10.0
#: Ray's settings for a local instance. Its workers run at niceness 0: Ray's default, 15,
#: made a worker's epoch up to 1.4× slower than the same loop outside Ray on a machine with
#: other load. And a busy machine must not bring it down: by default the GCS marks a raylet
#: dead after a few health checks of a few seconds go unanswered, which a loaded 2-core
#: machine can miss (the raylet is alive, only starved); a raylet that has really died takes
#: its workers with it, and the driver learns of it anyway. So: a check every 10 s, 60 s to
#: answer, 30 misses (5 minutes) before the node is declared dead, and as long before a
#: raylet gives up on a starved GCS.
LOCAL_SYSTEM_CONFIG = {
    "worker_niceness": 0,
    "health_check_period_ms": 10_000,
    "health_check_timeout_ms": 60_000,
    "health_check_failure_threshold": 30,
    "gcs_rpc_server_reconnect_timeout_s": 300,
}
#: Ray's switch for a node that is no cluster (ray._private.services.get_node_ip_address).
_NO_CLUSTER_VARIABLE = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
#: The environment variable Ray reads a cluster address from.
_ADDRESS_VARIABLE = ray_constants.RAY_ADDRESS_ENVIRONMENT_VARIABLE
#: Tries to start a local Ray: a second one outlasts a busy moment of a loaded machine.
START_ATTEMPTS = 2


def _worker_task(
    spec_data: dict[str, Any],
    storage_url: str,
    timeout: float | None,
    run_id: str,
    index: int,
    threads: int,
    shipped: str | None = None,
) -> WorkerSummary:
    node = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
    if shipped is not None:  # the user's code came with the task: Ray unpacked it here
        workload = spec_data["workload"]
        workload["search_path"] = remap(workload["search_path"], shipped, os.getcwd())
    spec = StudySpec.model_validate(spec_data)
    return run_worker(
        spec, storage_url, timeout, f"{run_id}-{index}", threads, node, index, run=run_id
    )


def _cpus_per_worker(execution: ExecutionSpec) -> float:
    """tuner.execution.resources.cpus_per_worker; a Ray started before (by a notebook, a
    test) has the CPUs it was given."""
    ray_cpus = ray.cluster_resources().get("CPU", 1) if ray.is_initialized() else None
    return cpus_per_worker(execution, usable_cpus() if ray_cpus is None else int(ray_cpus))


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
    wanted = {"CPU": _cpus_per_worker(execution)}
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


class _TokenNotice(logging.Filter):
    """Drops Ray's "Token authentication is enabled for this Ray cluster…" notice, which Ray
    logs at every start of a local instance: it concerns no user of a study bound to
    loopback. (Setting RAY_AUTH_MODE=token would silence it too, but Ray reads the mode when
    it is imported, and a driver that changed it afterwards connects without its token.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


logging.getLogger(ray_auth_setup.__name__).addFilter(_TokenNotice())


@contextlib.contextmanager
def _environment(**values: str | None) -> Iterator[None]:
    """Set (or, for None, unset) environment variables inside the block, as they were after."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def start_local_ray(cpus: int) -> None:
    """Start a private Ray instance on this machine, reachable from it only, with
    LOCAL_SYSTEM_CONFIG; retried once, and one line (ExecutionError) if it still fails.

    Private means ``address="local"``: without it ``ray.init()`` attaches to whatever
    ``RAY_ADDRESS`` names, or to the cluster that any ``ray start`` on this machine recorded
    in Ray's temporary folder (a record that outlives the cluster), and then refuses the CPU
    count a local run gives it. ``RAY_ADDRESS`` is also kept from the processes Ray starts.

    Ray binds its servers (GCS, raylet, object manager, every worker and the driver, the
    metrics agent) to the node's address, which on Linux is the machine's network address:
    anyone on the network could reach them. On Windows and macOS Ray binds to 127.0.0.1
    instead, unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER says the node joins a cluster; a local
    study is no cluster, so it starts Ray with that switch off: in the environment of the
    processes Ray starts, and in this process, where Ray read it at import. Both are put back
    once Ray is up (its processes keep what they were started with).

    Token authentication stays on, Ray's default for a local instance, without Ray's notice
    of that default on every run (see _TokenNotice).

    Raises:
        ExecutionError: Ray failed to start twice (on a loaded machine its raylet can miss
            Ray's fixed 30 s start-up wait).
    """
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with _environment(**{_NO_CLUSTER_VARIABLE: "0", _ADDRESS_VARIABLE: None}):
            for attempt in range(START_ATTEMPTS):
                try:
                    ray.init(
                        address="local",
                        num_cpus=cpus,
                        include_dashboard=False,
                        logging_level=logging.WARNING,
                        log_to_driver=False,
                        _system_config=LOCAL_SYSTEM_CONFIG,
                    )
                    return
                except Exception as error:  # Ray raises bare Exceptions for a failed start
                    ray.shutdown()  # what did start of this attempt
                    if attempt + 1 == START_ATTEMPTS:
                        raise ExecutionError(
                            f"Ray did not start on this machine in {START_ATTEMPTS} tries "
                            f"({_first_line(error)}): if the machine is busy, run again when "
                            "it is quieter; check that Ray's temporary folder (RAY_TMPDIR, "
                            "else /tmp) is writable and has space"
                        ) from None
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def start_ray(execution: ExecutionSpec) -> None:
    """Attach to the cluster at ``ray_address``, or start a local Ray (start_local_ray), and
    check that it can run the workers; before anything is written, so a mistake leaves no
    study behind. On a cluster the workers' niceness is what ``ray start`` was given
    (``RAY_worker_niceness=0 ray start …``).

    A ``RAY_ADDRESS`` in the environment is Ray's way to name a cluster, but a run joins only
    the cluster it is given (``--ray-address``, ``[execution] ray_address``): without one it
    is ignored (tuner.execution.backend.prepare says so).

    Raises:
        ClusterUnreachableError: the cluster address does not answer.
        ExecutionError: a local Ray did not start.
        SpecError: no node can hold a worker's CPUs or GPUs.
    """
    if not ray.is_initialized():
        if execution.ray_address:
            _probe(execution.ray_address)
            ray.init(
                address=execution.ray_address, logging_level=logging.WARNING, log_to_driver=False
            )
        else:
            start_local_ray(
                max(usable_cpus(), round(execution.workers * _cpus_per_worker(execution)))
            )
    _check_resources(execution)


def _ship(folder: Path) -> dict[str, Any]:
    """A task runtime environment whose working directory is `folder`, uploaded to the
    cluster now (tuner.execution.shipping). Ray uploads a local working_dir only for a job's
    ray.init, which a driver already attached (a test, a notebook) has had; a task takes a
    package already uploaded, so it is uploaded here as ray.init would."""
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    environment = {"working_dir": str(folder), "excludes": list(SHIP_EXCLUDES)}
    return upload_working_dir_if_needed(
        environment,
        include_gitignore=True,
        scratch_dir=ray._private.worker.global_worker.node.get_runtime_env_dir_path(),
        logger=logging.getLogger(__name__),
    )


def _dead_ray_processes() -> list[str]:
    """The kinds of the Ray processes this driver started (a local instance's raylet, GCS…)
    that have died. Ray's own health checks would notice a dead raylet only after the
    minutes LOCAL_SYSTEM_CONFIG gives them, and the driver would wait for its workers until
    then: so the driver looks itself (Ray's Node object holds the processes it started; it
    holds none when the driver attached to a cluster)."""
    node = ray._private.worker._global_node
    return [] if node is None else sorted({kind for kind, _ in node.dead_processes()})


def _as_tuner_error(error: BaseException) -> BaseException:
    """What the driver raises for an error out of Ray: a worker's TunerError as itself (a
    database gone for good: StorageUnreachableError), Ray failing as one ExecutionError line,
    anything else (Ctrl-C, a bug in a worker) as it is."""
    if isinstance(error, ray.exceptions.RayTaskError):
        return error.cause if isinstance(error.cause, TunerError) else error
    if isinstance(error, ray.exceptions.RayError):
        what = (str(error).strip().splitlines() or [""])[0]
        return _ray_failed(f"{type(error).__name__}: {what}")
    return error


def _ray_failed(what: str) -> ExecutionError:
    return ExecutionError(
        f"Ray failed under the study ({what}); finished trials are saved and running ones are "
        "re-run: run the same `tuner run` again to resume"
    )


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

    On KeyboardInterrupt, or any error, the worker tasks are cancelled before the exception
    propagates.

    Raises:
        ExecutionError: Ray failed (the local raylet died, a node was lost for good).
        StorageUnreachableError: a worker lost the study database for longer than the
            retry window.
    """
    execution = spec.execution
    start_ray(execution)
    cpus = _cpus_per_worker(execution)
    gpus = ray.cluster_resources().get("GPU", 0.0)
    task = ray.remote(
        num_cpus=cpus,
        num_gpus=gpus_per_worker(execution.gpus_per_trial, execution.workers, gpus),
        max_retries=WORKER_RETRIES,
    )(_worker_task)
    # Torch threads follow the CPUs the worker holds (Ray sets OMP_NUM_THREADS to them too).
    threads = torch_threads(cpus)
    spec_data = spec.to_dict()
    # On a cluster the user's code travels with the tasks (checked by the runner beforehand).
    shipped = code_folder(spec) if execution.ray_address else None
    if shipped is not None:
        task = task.options(runtime_env=_ship(shipped))
    pending = [
        task.remote(
            spec_data, storage_url, timeout, run_id, index, threads, shipped and str(shipped)
        )
        for index in range(execution.workers)
    ]
    refs = list(pending)
    try:
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=tick_seconds)
            if dead := _dead_ray_processes():
                raise _ray_failed(f"its {', '.join(dead)} died")
            on_tick()
        return ray.get(refs)
    except BaseException as error:
        # A polite cancel first lets each worker mark its trials interrupted; then force the
        # rest. Ray that failed may refuse both: its workers are gone with it.
        with contextlib.suppress(ray.exceptions.RayError):
            for ref in refs:
                ray.cancel(ref)
            _, stuck = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_SECONDS)
            for ref in stuck:
                ray.cancel(ref, force=True)
        translated = _as_tuner_error(error)
        if translated is error:
            raise
        raise translated from None
