"""``tuner dashboard``: the real optuna-dashboard served on the study database (it only reads).

It serves optuna-dashboard's WSGI app on a threaded wsgiref server, as its own command does,
on the storage opened by `tuner.storage.open_storage`, so a SQLite file gets WAL, the 60 s busy
timeout and BEGIN IMMEDIATE: the dashboard's polling then queues behind the workers' writes
instead of failing their trials with "database is locked" (optuna-dashboard issue 545). It
shows the study note (`tuner.note`) and the learning curves (`tuner.artifacts`) the workers
left behind.

Parameter importance: optuna-dashboard 0.21 always computes it with Optuna's
``PedAnovaImportanceEvaluator()`` at its defaults (no evaluator choice) over the COMPLETE
trials only. Optuna 5's PED-ANOVA is the conditional variant: for each parameter it splits the
trials into regimes by the parameter's distribution (inactive, or each distinct range), so
``learning_rate``, whose range differs per optimizer, is scored within each range and the
scores are summed, weighted by each regime's share of the top trials; regimes with fewer than
two trials are dropped with a warning.
"""

from __future__ import annotations

import errno
import socket
import warnings
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from tuner.errors import TunerError


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadedServer6(_ThreadedServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the page polls: no request log
        pass


def bind(host: str, port: int) -> WSGIServer:
    """Bind the dashboard's server socket, or raise TunerError naming the port and the fix."""
    server_class = _ThreadedServer6 if ":" in host else _ThreadedServer
    try:
        server = server_class((host, port), _QuietHandler)
    except OverflowError:
        raise TunerError(f"port {port} is not a port number; choose one in 1-65535") from None
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise TunerError(
                f"port {port} on {host} is already in use (another dashboard?); "
                f"choose another with --port, e.g. --port {port + 1}"
            ) from None
        if isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL:
            raise TunerError(f"cannot listen on host {host!r}: {error.strerror}") from None
        if error.errno == errno.EACCES:
            raise TunerError(
                f"port {port} needs privileges; choose one above 1023 with --port"
            ) from None
        raise TunerError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return server


def serve(storage: str | None, host: str, port: int) -> int:
    """Serve optuna-dashboard on the study database until Ctrl-C; 0 on a clean stop.

    Args:
        storage: the study database URL (None: $TUNER_STORAGE, else the embedded default).
        host: the address to listen on.
        port: the port to listen on (0: any free one).
    """
    import optuna
    import optuna_dashboard

    from tuner.artifacts import artifact_dir, artifact_store
    from tuner.storage import mask_url, open_storage, resolve_storage_url

    # Conditional PED-ANOVA warns of sparse regimes (an optimizer with one trial so far) at
    # every recomputation; the importances stay shown, the terminal stays readable.
    warnings.filterwarnings("ignore", message="Some regimes for parameter", category=UserWarning)

    server = bind(host, port)  # before anything slow: a busy port fails at once
    try:
        url = resolve_storage_url(storage)
        storage = open_storage(url)
        store = artifact_store(url)
        server.set_app(optuna_dashboard.wsgi(storage, artifact_store=store))
        studies = len(optuna.get_all_study_names(storage))
        shown_host = f"[{host}]" if ":" in host else host
        print(
            f"optuna-dashboard on http://{shown_host}:{server.server_port}/dashboard\n"
            f"  studies: {mask_url(url)} ({studies} {'study' if studies == 1 else 'studies'})\n"
            f"  artifacts: {artifact_dir(url)}\n"
            "Ctrl-C to stop.",
            flush=True,
        )
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
