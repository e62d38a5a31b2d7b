"""Run the worker loop in local processes: the backend of a study on one machine.

A private Ray instance costs a local run more than its quickstart trains: 5-6 s to start,
nearly 2 s to stop and about 1 GB of memory in its own processes. On one machine what Ray
gave the worker loop is little: start a process per worker, restart one that dies (Ray's
task retries), share the GPUs out, cancel them politely and then by force. That is this
module, over the standard library's multiprocessing (hand-written only where it has no
such policy: the retries, the GPU shares and the cancel).

Workers are forked from multiprocessing's fork server, which `warm_up` forks from the
driver once it has imported the worker loop (torch, Optuna, SQLAlchemy), before it opens a
database or starts a thread: each worker starts with all of it loaded, in memory shared with
the driver's until written.

Each worker runs in its own process group (Ctrl-C reaches the driver alone, which stops
the workers as Ray's cancel does, so each records its trial as interrupted) and dies with
the fork server, which ends with the driver: a killed driver leaves no worker training.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import multiprocessing.util
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from tuner.errors import ExecutionError, SpecError
from tuner.execution.resources import (
    CANCEL_GRACE_SECONDS,
    WORKER_RETRIES,
    cpus_per_worker,
    dies_with,
    gpus_per_worker,
    torch_threads,
    usable_cpus,
)

if TYPE_CHECKING:  # the command imports this module first, to warm up: nothing heavy here
    from tuner.execution.worker import WorkerSummary
    from tuner.spec import ExecutionSpec, StudySpec

#: What the fork server imports before it forks the first worker: the worker loop.
PRELOAD = ["tuner.execution.worker"]
#: GPU shares are counted in ten-thousandths, as Ray counts them, so that fractions add up.
_GPU_UNITS = 10_000

_CONTEXT = multiprocessing.get_context("forkserver")


def warm_up() -> None:
    """Start the fork server that workers are forked from, once per process.

    Forked from this process, with the worker loop imported here first: the server and its
    workers start with everything this process has loaded (torch above all), in memory they
    share with it, and nothing is imported twice. multiprocessing would start the server as a
    new interpreter that imports it all again (a second torch: 1 s of CPU and 170 MB). That
    is what happens where forking this process is not safe: other threads are running (a
    lock one holds would stay held in the copy), or CUDA is initialized here.
    """
    server = multiprocessing.forkserver._forkserver
    if server._forkserver_pid is not None or threading.active_count() > 1 or _cuda_in_use():
        _CONTEXT.set_forkserver_preload(PRELOAD)
        multiprocessing.forkserver.ensure_running()  # one running already: nothing to do
        return
    for module in PRELOAD:
        importlib.import_module(module)
    _fork_server_from_here(server)


def _cuda_in_use() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_initialized()


def _fork_server_from_here(server: multiprocessing.forkserver.ForkServer) -> None:
    """multiprocessing's fork server (its `main`, its protocol), in a fork of this process
    rather than a new interpreter: what `ForkServer.ensure_running` does, the spawn aside,
    and the same fields set (the standard library has no call for it)."""
    resource_tracker.ensure_running()
    with socket.socket(socket.AF_UNIX) as listener:
        address = multiprocessing.connection.arbitrary_address("AF_UNIX")
        listener.bind(address)
        if not multiprocessing.util.is_abstract_socket_namespace(address):
            os.chmod(address, 0o600)
        listener.listen()
        alive_r, alive_w = os.pipe()  # EOF on alive_r: every holder of alive_w is gone
        for stream in (sys.stdout, sys.stderr):  # or a worker's output would repeat ours
            stream.flush()
        pid = os.fork()
        if pid == 0:  # the server: it serves until the driver (and its workers) are gone
            try:
                os.close(alive_w)
                gc.freeze()  # what it shares stays shared: no collection touches it
                multiprocessing.forkserver.main(listener.fileno(), alive_r, [])
            finally:
                os._exit(0)
        os.close(alive_r)
    server._forkserver_address = address
    server._forkserver_alive_fd = alive_w
    server._forkserver_pid = pid


def machine_gpus() -> int:
    """The GPUs torch sees on this machine (0 on a CPU build)."""
    import torch

    return torch.cuda.device_count()


def device_names(gpus: list[int]) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a worker holding GPUs `gpus`, counted among those this
    process sees: where the driver itself was given some (``CUDA_VISIBLE_DEVICES=2,3``),
    GPU 0 is the first of those."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return ",".join(visible.split(",")[gpu] if visible else str(gpu) for gpu in gpus)


class GpuShares:
    """Which GPUs a worker may use, given out as Ray gives them to tasks: a fraction of one
    GPU packs workers onto the first GPU with room, a whole number takes that many free GPUs;
    a worker that finds no room waits for one to be given back."""

    def __init__(self, gpus: int, per_worker: float) -> None:
        self.free = [_GPU_UNITS] * gpus
        self.units = round(per_worker * _GPU_UNITS)

    def take(self) -> list[int] | None:
        """The GPU ids for one more worker ([] for a CPU worker), or None if none has room."""
        if self.units == 0:
            return []
        if self.units <= _GPU_UNITS:
            room = [gpu for gpu, free in enumerate(self.free) if free >= self.units]
            taken = room[:1]
        else:
            room = [gpu for gpu, free in enumerate(self.free) if free == _GPU_UNITS]
            taken = room[: self.units // _GPU_UNITS] if len(room) * _GPU_UNITS >= self.units else []
        if not taken:
            return None
        for gpu in taken:
            self.free[gpu] -= min(self.units, _GPU_UNITS)
        return taken

    def give_back(self, taken: list[int]) -> None:
        for gpu in taken:
            self.free[gpu] += min(self.units, _GPU_UNITS)


def check_resources(execution: ExecutionSpec, gpus: int) -> None:
    """Refuse a worker this machine cannot hold: it would wait for GPUs forever.

    Raises:
        SpecError: ``gpus_per_trial`` or ``cpus_per_trial`` is more than the machine has.
    """
    if execution.gpus_per_trial != "auto" and execution.gpus_per_trial > gpus:
        raise SpecError(
            f"[execution] gpus_per_trial = {execution.gpus_per_trial:g}, but this machine has "
            f"{gpus} GPUs: set 0 (CPU only) or 'auto'"
        )
    if execution.cpus_per_trial > usable_cpus():
        raise SpecError(
            f"[execution] cpus_per_trial = {execution.cpus_per_trial:g}, but this machine has "
            f"{usable_cpus()} CPUs: set at most {usable_cpus()}"
        )


@dataclass
class _Worker:
    """One worker slot: its process (None between starts), GPUs, result pipe and restarts."""

    index: int
    process: BaseProcess | None = None
    gpus: list[int] = field(default_factory=list)
    results: multiprocessing.connection.Connection | None = None
    restarts: int = 0
    outcome: tuple[str, Any] | None = None


def run_locally(
    spec: StudySpec,
    storage_url: str,
    run_id: str,
    timeout: float | None,
    on_tick: Callable[[], None],
    tick_seconds: float = 0.5,
) -> list[WorkerSummary]:
    """Run the spec's workers as local processes until all have finished; call `on_tick`
    while waiting. `timeout` (seconds) counts from the run's first trial (see run_worker).

    On KeyboardInterrupt, or any error, the workers are stopped (each records its trial as
    interrupted) before the exception propagates.

    Raises:
        ExecutionError: a worker died more often than WORKER_RETRIES, or failed to start.
        StorageUnreachableError: a worker lost the study database for longer than the
            retry window (any TunerError of a worker is raised as itself).
    """
    execution = spec.execution
    gpus = machine_gpus()  # checked against the spec before the study was written (prepare)
    warm_up()  # a server that has died since is started again
    shares = GpuShares(gpus, gpus_per_worker(execution.gpus_per_trial, execution.workers, gpus))
    threads = torch_threads(cpus_per_worker(execution, usable_cpus()))
    handed = {
        "spec_data": spec.to_dict(),
        "storage_url": storage_url,
        "timeout": timeout,
        "run_id": run_id,
        "threads": threads,
        # A worker starts from the fork server's state: it takes the driver's as it is now.
        "cwd": os.getcwd(),
        "environment": dict(os.environ),
        "sys_path": list(sys.path),
    }
    workers = [_Worker(index) for index in range(execution.workers)]
    try:
        while unfinished := [worker for worker in workers if worker.outcome is None]:
            for worker in unfinished:
                if worker.process is None:
                    _start(worker, shares, handed)
            _wait(unfinished, tick_seconds)
            for worker in unfinished:
                _collect(worker, shares)
            on_tick()
    except BaseException:
        _stop([worker.process for worker in workers if worker.process is not None])
        raise
    return [worker.outcome[1] for worker in workers if worker.outcome is not None]


def _start(worker: _Worker, shares: GpuShares, handed: dict[str, Any]) -> None:
    """Start the worker's process, if a GPU share is free for it."""
    gpus = shares.take()
    if gpus is None:
        return  # it waits for a share another worker gives back
    receiving, sending = _CONTEXT.Pipe(duplex=False)
    process = _CONTEXT.Process(
        target=_worker_main,
        args=(sending, worker.index, gpus, handed),
        name=f"tuner-worker-{worker.index}",
        daemon=False,
    )
    process.start()
    sending.close()
    worker.process, worker.gpus, worker.results = process, gpus, receiving


def _wait(workers: list[_Worker], seconds: float) -> None:
    """Until a worker ends or reports, or `seconds` pass."""
    waitables: list[Any] = []
    for worker in workers:
        if worker.process is not None and worker.results is not None:
            waitables += [worker.process.sentinel, worker.results]
    if waitables:
        multiprocessing.connection.wait(waitables, timeout=seconds)
    else:
        time.sleep(seconds)


def _collect(worker: _Worker, shares: GpuShares) -> None:
    """Take what a finished worker reported; restart one that died without a word.

    Raises:
        ExecutionError: it died WORKER_RETRIES times over.
        BaseException: what its worker loop raised (a TunerError as itself).
    """
    process, results = worker.process, worker.results
    if process is None or results is None or process.is_alive():
        return
    try:
        message = results.recv() if results.poll() else None
    except EOFError:  # died without a word: the pipe's end is all there is to read
        message = None
    process.join()
    results.close()
    shares.give_back(worker.gpus)
    worker.process = worker.results = None
    if message is None:  # killed (SIGKILL, out of memory): Ray would retry its task
        if worker.restarts == WORKER_RETRIES:
            raise ExecutionError(
                f"worker {worker.index} died {WORKER_RETRIES + 1} times (last: "
                f"{_exit_reason(process.exitcode)}); finished trials are saved and running ones "
                "are re-run: run the same `tuner run` again to resume"
            )
        worker.restarts += 1
        return
    kind, payload = message
    if kind == "error":
        raise payload
    worker.outcome = message


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def _stop(processes: list[BaseProcess]) -> None:
    """Stop workers as Ray cancels tasks: SIGINT (each records its trials as interrupted),
    then SIGKILL for any still running after CANCEL_GRACE_SECONDS."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(process.pid, signal.SIGINT)
    limit = time.monotonic() + CANCEL_GRACE_SECONDS
    for process in processes:
        process.join(max(0.0, limit - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _die_with_parent() -> None:
    """Ask Linux for SIGKILL when the fork server ends, which it does with the driver.

    The server ends when every holder of the driver's end of its "alive" pipe has: the
    driver, and each child, which multiprocessing hands that end so that it may ask the same
    server for processes of its own. A worker lets it go (multiprocessing has no call for
    it: the fields are its own), or a killed driver's workers would keep the server, and so
    themselves, alive; a worker that wants a fork server starts its own.
    """
    server = multiprocessing.forkserver._forkserver
    if server._forkserver_alive_fd is not None:
        os.close(server._forkserver_alive_fd)
    server._forkserver_alive_fd = server._forkserver_address = server._forkserver_pid = None
    if sys.platform.startswith("linux") and not dies_with(os.getppid(), signal.SIGKILL):
        os._exit(1)  # the server ended before the request took effect


def _worker_main(
    results: multiprocessing.connection.Connection,
    index: int,
    gpus: list[int],
    handed: dict[str, Any],
) -> None:
    """A worker process: the driver's directory, environment and import path, its GPUs, the
    worker loop; its summary, or the exception that ended it, sent back to the driver."""
    _die_with_parent()
    os.setpgrp()  # Ctrl-C at the terminal reaches the driver, which stops this worker
    os.chdir(handed["cwd"])
    os.environ.clear()
    os.environ.update(handed["environment"])
    # Ray's convention: a worker sees only the GPUs it holds ("" for none).
    os.environ["CUDA_VISIBLE_DEVICES"] = device_names(gpus)
    sys.path[:] = handed["sys_path"]
    from tuner.execution.worker import run_worker
    from tuner.spec import StudySpec

    run_id = handed["run_id"]
    try:
        spec = StudySpec.model_validate(handed["spec_data"])
        summary = run_worker(
            spec,
            handed["storage_url"],
            handed["timeout"],
            f"{run_id}-{index}",
            handed["threads"],
            socket.gethostname(),
            index,
            run=run_id,
        )
    except BaseException as error:  # every end of the loop, Ctrl-C's too, goes to the driver
        error.add_note(f"in worker {index}:\n{traceback.format_exc()}")
        try:
            results.send(("error", error))
        except Exception:  # an exception that cannot be pickled: its text
            results.send(("error", ExecutionError(f"worker {index} failed: {error!r}")))
        return
    results.send(("done", summary))
