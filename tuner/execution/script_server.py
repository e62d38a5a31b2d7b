"""Start each trial's command so that it starts at once and cannot outlive its worker.

On Linux each worker of a ``[workload] command`` study keeps one fork server: a process of its
own, in a session of its own, started with the worker's script loop (its imports overlap the
worker's first claim) and stopped with it. The server starts every trial as a child it forks:
a new session (the trial's process group), stdout and stderr on the trial's files, the study
folder as the working directory, the trial's environment. A Python script (``python X.py
args`` or ``python -m module args``, `python` being tuner's interpreter) then runs in that
child as ``python`` would run it (sys.argv, sys.path[0], ``__main__``, its exit status), in a
server that has imported torch and tuner's side of `tuner.current_trial()` once (and, once a
trial has named it, loaded the study: tuner.execution.script.prepare_fork): a trial starts in
milliseconds instead of importing torch again. Any other command is exec'd from the child: a
fresh program, in its group and under the same guard.

Between trials the server also imports the modules the last trial's script imported, so that
the next child finds them loaded as a training function finds its imports in the worker: the
installed ones and tuner's, never the script's own (those in its folder or the working
directory, which may ask for the trial when imported). The child of a server that never ran a
trial starts with tuner's module state fresh. An import that starts a thread or loads the GPU
driver would make forking unsafe (a child could not use CUDA): the server then starts afresh
(exec, same process) and stops learning.

Dying with the worker: the server asks the kernel for SIGTERM when the worker (the thread that
started it) dies (Linux prctl PR_SET_PDEATHSIG), and then ends the running trial's whole group,
SIGTERM and SIGKILL after a grace, before it exits; a worker that stops normally ends the group
itself (tuner.execution.script). Without it a SIGKILLed worker would leave the script and its
own children (DataLoader workers, a subprocess) running, orphaned. Each child asks for SIGKILL
when the server dies, in case the server itself is killed outright.

Why not multiprocessing's forkserver: its server lives as long as any child it forked (each
holds its liveness pipe), so it does not see the worker die; its children run under
multiprocessing's bootstrap (stdin on /dev/null, its own exit and traceback handling); and it
starts a resource tracker besides. What a trial needs (its session, signals, stdio, argv and
an interpreter's exit status) is a few lines around os.fork.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import io
import os
import runpy
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import IO, NoReturn

from tuner.execution.resources import dies_with

#: Seconds a trial's group gets between SIGTERM and SIGKILL.
GRACE_SECONDS = 5
#: How the worker starts the server (not ``-m``, which would load this module twice in it:
#: once as ``__main__``, once for what the worker sends).
SERVE = "import sys; from tuner.execution.script_server import main; sys.exit(main(sys.argv[1:]))"


@dataclass
class Launch:
    """One trial's command and where it runs: what the worker asks its server for."""

    #: The command, with ``python`` already tuner's interpreter (script.interpreted).
    argv: list[str]
    cwd: str | None
    env: dict[str, str]
    stdout: str
    stderr: str
    #: torch's CPU threads in the worker, which a forked Python script trains with too.
    threads: int


def python_entry(argv: list[str]) -> tuple[str, str, list[str]] | None:
    """What ``python X.py args`` or ``python -m module args`` runs, as ("path", X, args) or
    ("module", module, args); None for any other command (another program, python with
    options), which is exec'd."""
    if len(argv) < 2 or argv[0] != sys.executable:
        return None
    if argv[1] == "-m" and len(argv) > 2:
        return "module", argv[2], argv[3:]
    if not argv[1].startswith("-"):
        return "path", argv[1], argv[2:]
    return None


def end_group(group: int, wait: Callable[[float | None], object]) -> None:
    """Stop every process of a trial's group: SIGTERM, then SIGKILL once its leader has
    exited or the grace is over. `wait(timeout)` waits for the leader, raising
    subprocess.TimeoutExpired as subprocess.Popen.wait does."""
    for sig, timeout in ((signal.SIGTERM, GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return  # the group is empty: all gone
        try:
            wait(timeout)
        except subprocess.TimeoutExpired:
            continue


class Started:
    """A trial's process as the server started it, read as a subprocess.Popen: its pid (its
    group's id too) and `wait`, for its exit status (negative: killed by that signal)."""

    def __init__(self, pid: int, channel: Connection):
        self.pid, self.returncode, self._channel = pid, None, channel

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not self._channel.poll(timeout):
                raise subprocess.TimeoutExpired(f"trial process {self.pid}", timeout or 0)
            try:
                self.returncode = self._channel.recv()
            except EOFError:  # the server died, and its SIGKILL took the child with it
                self.returncode = -signal.SIGKILL
        return self.returncode


class ForkServer:
    """The worker's side: starts its server, asks it for each trial, stops it."""

    def __init__(self, python: bool):
        self.python = python
        self._spawn()

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            argv = [sys.executable, "-c", SERVE, str(os.getpid()), str(theirs.fileno())]
            argv += ["--python", "--learn"] if self.python else []
            # A session of its own: the terminal's Ctrl-C is the worker's to handle.
            self.process = subprocess.Popen(
                argv, pass_fds=[theirs.fileno()], start_new_session=True
            )
        self.channel = Connection(ours.detach())

    def start(self, launch: Launch) -> Started:
        """Start a trial's command; returns once it runs."""
        if self.process.poll() is not None:  # killed from outside: start a fresh one
            self.channel.close()
            self._spawn()
        try:
            self.channel.send(launch)
            return Started(self.channel.recv(), self.channel)
        except (EOFError, OSError) as error:
            raise RuntimeError(
                f"the worker's script server stopped (status {self.process.poll()}); "
                "see the worker's log"
            ) from error

    def close(self) -> None:
        """Stop the server (no trial runs by now; one that did would have its group ended)."""
        self.channel.close()
        self.process.terminate()
        self.process.wait()


def main(argv: list[str]) -> int:
    """The server: ``WORKER_PID FD [--python] [--learn]``; serves until the worker closes FD."""
    worker, fd = int(argv[0]), int(argv[1])
    server = _Server(Connection(fd), python="--python" in argv, learn="--learn" in argv)
    signal.signal(signal.SIGTERM, server.worker_died)
    if not dies_with(worker, signal.SIGTERM):
        return 0  # the worker died before the request took effect
    # Torch's import starts a thread of its own (its BLAS pool, which pthread_atfork resets in
    # the child); the server runs no Python thread (see _Server.learn). Python 3.12 warns at
    # each fork of a process with threads.
    warnings.filterwarnings("ignore", message=r".*use of fork\(\) may lead to deadlocks")
    if server.python:
        server.prepare(None)
    server.serve()
    return 0


class _Server:
    """The server's loop: one trial at a time (a worker trains one script trial at a time)."""

    def __init__(self, channel: Connection, python: bool, learn: bool):
        self.channel, self.python, self.learning = channel, python, learn
        self.pid = os.getpid()
        self.running: int | None = None  # the pid of the trial under way
        #: The modules loaded here: a child reports only those it adds (see _learnable).
        self.loaded: frozenset[str] = frozenset()
        #: Where installed modules live (site-packages, the standard library), found once
        #: here rather than in each child (sysconfig takes milliseconds the first time).
        paths = [*site.getsitepackages(), site.getusersitepackages()]
        paths += [sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib")]
        self.installed = frozenset(os.path.realpath(path) for path in paths)

    def worker_died(self, *_: object) -> None:
        """SIGTERM: the worker is gone (or the server is told to stop): end the trial's group."""
        if self.running is not None:
            end_group(self.running, lambda timeout: _reap(self.running, timeout))
        os._exit(0)

    def prepare(self, env: dict[str, str] | None) -> None:
        """Torch, and what tuner.current_trial() can do before it has a trial (once a trial's
        environment has named the study, its storage and spec too)."""
        from tuner.execution.script import prepare_fork

        with contextlib.suppress(Exception):  # a database out of reach: the child will say
            prepare_fork(env)

    def preload(self, modules: tuple[str, ...] | list[str]) -> None:
        for name in modules:
            if name not in sys.modules:
                with contextlib.suppress(Exception):
                    importlib.import_module(name)

    def serve(self) -> None:
        self.loaded = frozenset(sys.modules)
        while True:
            try:
                launch: Launch = self.channel.recv()
            except EOFError:
                return  # the worker is done with its trials
            with tempfile.TemporaryFile() as modules:
                sys.stdout.flush()  # nothing buffered here is written twice by the child
                sys.stderr.flush()
                # The child's collections skip what it inherits: one walking the server's
                # half a million objects wrote to each, copying every page (0.3 s a trial).
                gc.freeze()
                pid = os.fork()
                if pid == 0:
                    _child(launch, self, modules)
                self.running = pid
                try:
                    self.channel.send(pid)
                    _, status = os.waitpid(pid, 0)
                    self.running = None
                    self.channel.send(os.waitstatus_to_exitcode(status))
                except OSError:
                    return  # the worker is gone; SIGTERM ends the group
                modules.seek(0)
                learned = modules.read().decode().split()
            if self.python:
                self.prepare(launch.env)
            if self.learning and learned:
                self.learn(learned)
            self.loaded = frozenset(sys.modules)

    def learn(self, names: list[str]) -> None:
        """Import what the last trial's script imported, quietly. If that started a Python
        thread or loaded the GPU driver, forking is no longer safe: start afresh, unlearned."""
        threads, driver = threading.active_count(), _gpu_driver_loaded()
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            self.preload(names)
        if threading.active_count() > threads or (_gpu_driver_loaded() and not driver):
            print(
                "tuner: the script server's imports started a thread or loaded the GPU driver; "
                "it starts afresh and no longer keeps what scripts import",
                file=sys.stderr,
            )
            fd = self.channel.fileno()
            os.set_inheritable(fd, True)
            argv = [sys.executable, "-c", SERVE, str(os.getppid()), str(fd), "--python"]
            os.execv(sys.executable, argv)


def _gpu_driver_loaded() -> bool:
    with open("/proc/self/maps") as maps:
        return "libcuda.so" in maps.read()


def _reap(pid: int, timeout: float | None) -> None:
    """Wait for the server's child `pid` to exit, as subprocess.Popen.wait does."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"trial process {pid}", timeout or 0)
            time.sleep(0.05)
    except ChildProcessError:
        return  # already reaped


#: The child's own text streams, kept from being collected (their predecessors too, which
#: hold fd 1 and 2).
_streams: list[IO[str]] = []


def _child(launch: Launch, server: _Server, modules: IO[bytes]) -> NoReturn:
    """In the forked child of `server`: become the trial's process (group), then run its
    command."""
    status = 1
    try:
        os.setsid()
        if not dies_with(server.pid, signal.SIGKILL):
            os._exit(1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        server.channel.close()
        for path, fd in ((launch.stdout, 1), (launch.stderr, 2)):
            file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(file, fd)
            os.close(file)
        if launch.cwd:
            os.chdir(launch.cwd)
        os.environ.clear()
        os.environ.update(launch.env)
        entry = python_entry(launch.argv)
        if entry is None:
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as subprocess restores it
            try:
                os.execvp(launch.argv[0], launch.argv)
            except OSError as error:
                print(f"tuner: cannot run {launch.argv[0]}: {error}", file=sys.stderr)
                status = 127  # as a shell says it
                raise SystemExit from None
        _reopen_streams()
        status = _run_python(*entry, launch.threads, server, modules)
    except SystemExit:
        pass
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(status)


def _reopen_streams() -> None:
    """sys.stdout and sys.stderr as an interpreter opens them on files: stdout block-buffered,
    stderr line-buffered, both unbuffered under PYTHONUNBUFFERED (the server's streams were
    opened on the worker's terminal or pipes)."""
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))  # the trial's environment
    for name, fd in (("stdout", 1), ("stderr", 2)):
        old = getattr(sys, name)
        binary = open(fd, "wb", buffering=0 if unbuffered else -1, closefd=False)  # noqa: SIM115
        stream = io.TextIOWrapper(
            binary,
            encoding=getattr(old, "encoding", None),
            errors=getattr(old, "errors", None),
            line_buffering=name == "stderr",
            write_through=unbuffered,
        )
        _streams.extend((old, stream))
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _run_python(
    kind: str, target: str, args: list[str], threads: int, server: _Server, modules: IO[bytes]
) -> int:
    """Run a script or module as ``__main__``, as ``python`` would; its exit status. Then
    write to `modules` what it imported that the server may import for the next trial."""
    own = {os.path.realpath(os.getcwd())}  # the user's own code: not the server's to import
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if "numpy" in sys.modules:  # seeded from the OS in a fresh interpreter: not the same
        sys.modules["numpy"].random.seed()  # state in every trial (random reseeds at fork)
    # The finalizers of the server's imports are the server's teardown, not the trial's
    # (torch frees its operator registrations: 35 ms an exit); the script's own still run.
    for finalizer in list(getattr(weakref.finalize, "_registry", ())):
        finalizer.atexit = False
    sys.argv = [target, *args]
    sys.path[0] = os.getcwd() if kind == "module" else os.path.dirname(os.path.realpath(target))
    own.add(sys.path[0])
    try:
        if kind == "module":
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            # Its absolute path, as python's __file__ and tracebacks have it (sys.argv[0] too).
            runpy.run_path(os.path.abspath(target), run_name="__main__")
        status = 0
    except SystemExit as exit:
        status = _exit_status(exit.code)
    except BaseException as error:
        tb = error.__traceback__  # from the script's frames on, as python prints it
        while tb is not None and tb.tb_frame.f_globals.get("__name__") in (__name__, "runpy"):
            tb = tb.tb_next
        sys.excepthook(type(error), error.with_traceback(tb), tb)
        status = -signal.SIGINT if isinstance(error, KeyboardInterrupt) else 1
    # What an interpreter does at exit, less its teardown (seconds, with torch loaded).
    for thread in threading.enumerate():
        if not thread.daemon and thread is not threading.current_thread():
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    modules.write("\n".join(_learnable(server, own)).encode())
    modules.flush()
    if status < 0:  # an uncaught KeyboardInterrupt: die of SIGINT, as python does
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status


def _exit_status(code: object) -> int:
    """The exit status of ``sys.exit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _learnable(server: _Server, own: set[str]) -> list[str]:
    """The modules imported here that `server` has not and may import: installed or tuner's,
    not the user's `own` (under the working directory or the script's folder)."""

    def under(path: str, folders: Iterable[str]) -> bool:
        return any(path == folder or path.startswith(folder + os.sep) for folder in folders)

    names = []
    for name, module in list(sys.modules.items()):
        if name in server.loaded or name.startswith("__") or not getattr(module, "__spec__", 0):
            continue
        folders = getattr(module, "__path__", None) or []  # a namespace package has no file
        origin = getattr(module, "__file__", None) or next(iter(folders), "")
        origin = os.path.realpath(origin) if origin else ""
        if (
            name.split(".")[0] == "tuner"
            or not under(origin, own)
            or under(origin, server.installed)
        ):
            names.append(name)
    return names
