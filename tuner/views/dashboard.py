"""``tuner dashboard``: the real optuna-dashboard served on the study database (it only reads).

It serves optuna-dashboard's WSGI app on a threaded wsgiref server, as its own command does,
on the storage opened by `tuner.storage.rdb.open_storage`, so a SQLite file gets WAL, the 60 s busy
timeout and BEGIN IMMEDIATE: the dashboard's polling then queues behind the workers' writes
instead of failing their trials with "database is locked" (optuna-dashboard issue 545). It
shows the study note (`tuner.study.note`) and the learning curves (`tuner.storage.artifacts`) the
workers left behind.

Parameter importance: optuna-dashboard 0.21 always computes it with Optuna's
``PedAnovaImportanceEvaluator()`` at its defaults (no evaluator choice) over the COMPLETE
trials only. Optuna 5's PED-ANOVA is the conditional variant: for each parameter it splits the
trials into regimes by the parameter's distribution (inactive, or each distinct range), so
``learning_rate``, whose range differs per optimizer, is scored within each range and the
scores are summed, weighted by each regime's share of the top trials; regimes with fewer than
two trials are dropped with a warning.

optuna-dashboard has no setting for which trials count or how many are enough: it computes
from two complete trials on, where they rank noise (on a 4-trial study it gave ``eps`` 0.95),
and counts confirmation runs and warm-start copies, which credit whatever the winners share.
So `search_importances` answers its importance request itself, with the very computation
`tuner report` shows (tuner.study.importance): PED-ANOVA at the dashboard's defaults over the
search's own results, or the reason while there are fewer than
`tuner.study.importance.MIN_TRIALS`; the page then says "Failed to load hyperparameter importance
(reason=...)" where the chart would be. Plain ``optuna-dashboard`` on the same database
still counts every complete trial, as the study note says.
"""

from __future__ import annotations

import errno
import json
import re
import socket
import warnings
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from tuner.errors import TunerError

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: optuna-dashboard's importance request (its REST API, as its page calls it).
_IMPORTANCE_REQUEST = re.compile(r"/api/studies/(\d+)/param_importances")


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


def search_importances(app: WSGIApp, storage: BaseStorage) -> WSGIApp:
    """Wrap optuna-dashboard's WSGI app so that its importance chart shows what `tuner report`
    shows: PED-ANOVA over the search's results, or the reason there is none yet (HTTP 400, as
    the dashboard reports its own failures); every other request goes to the dashboard
    unchanged."""
    from optuna.trial import TrialState

    from tuner.study.importance import ped_anova, search_results, withheld

    # study id → (how many results, the answer): finished trials never change, so the answer
    # holds until another result lands, as optuna-dashboard caches its own. A page polled
    # hard would otherwise recompute PED-ANOVA beside the workers, on every request.
    answered: dict[int, tuple[int, dict[str, Any]]] = {}

    def answer(study_id: int) -> tuple[str, dict[str, Any]] | None:
        """The status and answer; None for a study tuner did not shape (several objectives),
        which the dashboard answers itself. KeyError: no such study."""
        directions = storage.get_study_directions(study_id)
        if len(directions) != 1:
            return None
        trials = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,))
        results = search_results(trials)
        reason = withheld(len(results))
        if reason is not None:
            return "400 Bad Request", {"reason": f"importance not shown: {reason}"}
        count, reply = answered.get(study_id, (0, {}))
        if count != len(results):
            kinds = {n: type(d).__name__ for t in results for n, d in t.distributions.items()}
            rows = [
                {"name": name, "importance": value, "distribution": kinds[name]}
                for name, value in ped_anova(results, directions[0]).items()
            ]
            reply = {"param_importances": [rows]}  # one list per objective
            answered[study_id] = (len(results), reply)
        return "200 OK", reply

    def routed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = _IMPORTANCE_REQUEST.fullmatch(environ.get("PATH_INFO", ""))
        if request is None:
            return app(environ, start_response)
        try:
            answered_here = answer(int(request[1]))
        except KeyError:  # no such study: the dashboard answers 404 itself
            answered_here = None
        if answered_here is None:
            return app(environ, start_response)
        status, reply = answered_here
        body = json.dumps(reply).encode()
        start_response(
            status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return routed


def same_origin(app: WSGIApp) -> WSGIApp:
    """Wrap a WSGI app so that no answer carries ``Access-Control-Allow-Origin``.

    optuna-dashboard answers artifact requests with ``Access-Control-Allow-Origin: *``: any web
    page the user visits could then read a dashboard on localhost's learning curves and trial
    logs. Without the header, browsers let only the dashboard's own page read them.
    """

    def answered(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
            kept = [(k, v) for k, v in headers if k.lower() != "access-control-allow-origin"]
            return start_response(status, kept, *rest)

        return app(environ, start)

    return answered


def serve(storage: str | None, host: str, port: int) -> int:
    """Serve optuna-dashboard on the study database until Ctrl-C; 0 on a clean stop.

    Args:
        storage: the study database URL (None: $TUNER_STORAGE, else the embedded default).
        host: the address to listen on.
        port: the port to listen on (0: any free one).
    """
    import optuna
    import optuna_dashboard

    from tuner.storage.artifacts import artifact_dir, artifact_store
    from tuner.storage.rdb import mask_url, open_storage, resolve_storage_url

    # Conditional PED-ANOVA warns of sparse regimes (an optimizer with one trial so far) at
    # every recomputation; the importances stay shown, the terminal stays readable.
    warnings.filterwarnings("ignore", message="Some regimes for parameter", category=UserWarning)

    server = bind(host, port)  # before anything slow: a busy port fails at once
    try:
        url = resolve_storage_url(storage)
        storage = open_storage(url)
        store = artifact_store(url)
        app = optuna_dashboard.wsgi(storage, artifact_store=store)
        server.set_app(same_origin(search_importances(app, storage)))
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
