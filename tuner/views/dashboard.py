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
`tuner.study.importance.MIN_TRIALS`. The dashboard's page knows only two answers, bars or
an error it pops as a red "Failed to load hyperparameter importance" toast over a blank
panel; so a withheld answer is an empty chart with the reason beside it, and `explained`
adds one small script to the page that writes that reason into the panel, in words. Plain
``optuna-dashboard`` on the same database still counts every complete trial, as the study
note says.

Readable pages: optuna-dashboard shows every user attribute as one unbroken line, so a
trial's ``curve`` (its per-epoch record, up to 1,024 characters of JSON) made each trial page
some 9,600 px wide, its ``config`` some 3,400, and the study's ``spec`` was a blob cut at the
edge. `readable` shows the config one setting a line, and the others as a line that says where
to read them (the learning-curve artifact, the study note); the database keeps them whole for
`tuner report` and `best_config()`. A diverged trial, which Optuna records as Complete, shows
its ``diverged`` reason first and as its note while it has none of its own.
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
from tuner.study.results import DIVERGED_ATTR

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: optuna-dashboard's importance request (its REST API, as its page calls it).
_IMPORTANCE_REQUEST = re.compile(r"/api/studies/(\d+)/param_importances")
#: optuna-dashboard's answers that carry user attributes: the studies, and one study in detail.
_STUDY_REQUEST = re.compile(r"/api/studies(/\d+)?")
#: What `readable` shows in place of the attributes too long to read on a page.
_SHOWN_AS = {
    "curve": "the per-epoch record, drawn as the learning curve under Artifacts below",
    "spec": "the study file as tuner recorded it: the study's Note says it in words",
}
#: optuna-dashboard's page: every path under /dashboard is its one HTML page.
_PAGE_REQUEST = re.compile(r"/dashboard(/.*)?")
#: Where `explained` serves its script: the page's Content-Security-Policy runs scripts from
#: the dashboard's own origin only, never inline ones.
_SCRIPT_PATH = "/tuner/importance-withheld.js"
#: Writes a withheld importance's reason into the dashboard's importance panel. It reads the
#: answers to the page's own importance requests (by study), and whenever the panel of a
#: study whose importances are withheld is on the page, puts the reason in it.
_SCRIPT = r"""(() => {
  const reasons = new Map();
  const answered = /\/api\/studies\/(\d+)\/param_importances$/;
  const fetched = window.fetch.bind(window);
  window.fetch = async (...args) => {
    const response = await fetched(...args);
    const request = answered.exec(String(args[0] instanceof Request ? args[0].url : args[0]));
    if (request !== null && response.ok) {
      response.clone().json().then((body) => {
        reasons.set(request[1], body.withheld ?? null);
        explain();
      }).catch(() => {});
    }
    return response;
  };
  const explain = () => {
    const panel = document.getElementById("graph-hyperparameter-importances");
    const study = /\/dashboard\/studies\/(\d+)/.exec(window.location.pathname);
    const reason = panel && study ? reasons.get(study[1]) : null;
    const shown = document.getElementById("tuner-importance-withheld");
    if (shown !== null && (shown.parentElement !== panel || !reason)) shown.remove();
    if (!reason || (shown !== null && shown.parentElement === panel)) return;
    const words = document.createElement("p");
    words.id = "tuner-importance-withheld";
    words.style.cssText = "margin: 2em; font-size: 1.1em; opacity: 0.8";
    words.textContent = reason.charAt(0).toUpperCase() + reason.slice(1) + ".";
    panel.appendChild(words);
  };
  new MutationObserver(explain).observe(document, { childList: true, subtree: true });
})();
"""


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
    shows: PED-ANOVA over the search's results, or no bars and the reason there are none yet
    (``withheld``, which `explained` shows in the panel); every other request goes to the
    dashboard unchanged."""
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
        if reason is not None:  # no bars, not an error: the page would pop a red toast
            return "200 OK", {
                "param_importances": [],
                "withheld": f"importance not shown: {reason}",
            }
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


def _config_lines(value: str) -> list[dict[str, str]]:
    """A trial's ``config`` (serialized JSON) as one line per setting it uses, ``config.
    learning_rate``, ``config.hyperparameters.beta1``...: one line of all of them is some
    3,400 px. Unused settings (null, empty) are left out; JSON optuna-dashboard cut at its
    1,024 characters stays as it is."""
    try:
        config = json.loads(value)
    except ValueError:
        return [{"key": "config", "value": value}]

    def lines(prefix: str, item: Any) -> list[dict[str, str]]:
        if isinstance(item, dict):
            return [line for k, v in item.items() for line in lines(f"{prefix}.{k}", v)]
        if item is None:
            return []
        return [{"key": prefix, "value": item if isinstance(item, str) else json.dumps(item)}]

    return lines("config", config)


def _readable_attrs(owner: dict[str, Any]) -> None:
    """Shorten a study's or trial's serialized user attributes in place (see `readable`), the
    diverged reason first; a diverged trial with no note of its own gets the reason as one."""
    attrs = []
    for attr in owner.get("user_attrs", []):
        key, value = attr["key"], _SHOWN_AS.get(attr["key"], attr["value"])
        attrs += _config_lines(value) if key == "config" else [{"key": key, "value": value}]
    attrs.sort(key=lambda attr: attr["key"] != DIVERGED_ATTR)  # stable: the rest keep order
    owner["user_attrs"] = attrs
    reason = next((a["value"] for a in attrs if a["key"] == DIVERGED_ATTR), None)
    note = owner.get("note")
    if reason is not None and isinstance(note, dict) and not note.get("body"):
        # Version 0 as optuna-dashboard gives a note never saved: editing it saves the first.
        owner["note"] = {
            "version": note.get("version", 0),
            "body": (
                f"**Diverged**: {reason}.\n\nRecorded as Complete with the worst value and "
                "marked infeasible, so that the samplers learn to avoid it; it is no result "
                "(`tuner best`, `best_config()` and `tuner report` leave it out)."
            ),
        }


def readable(app: WSGIApp) -> WSGIApp:
    """Wrap optuna-dashboard's WSGI app so that its study and trial pages stay readable: the
    answers that carry user attributes have the long ones shortened and a diverged trial's
    reason in sight (`_readable_attrs`); every other request goes to the dashboard unchanged."""

    def answered(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if _STUDY_REQUEST.fullmatch(environ.get("PATH_INFO", "")) is None:
            return app(environ, start_response)
        status, headers, body = _collected(app, environ)
        if status.startswith("200"):
            answer = json.loads(body)
            for owner in [
                answer,
                *answer.get("study_summaries", []),
                *answer.get("trials", []),
                *answer.get("best_trials", []),
            ]:
                _readable_attrs(owner)
            body = json.dumps(answer).encode()
            headers = _with_length(headers, body)
        start_response(status, headers)
        return [body]

    return answered


def _collected(app: WSGIApp, environ: dict[str, Any]) -> tuple[str, list[Any], bytes]:
    """Run `app` on one request and collect its whole answer: status, headers and body."""
    answer: list[Any] = []
    chunks = app(environ, lambda status, headers, *rest: answer.extend([status, headers]))
    try:
        body = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return answer[0], answer[1], body


def _with_length(headers: list[tuple[str, str]], body: bytes) -> list[tuple[str, str]]:
    """`headers` for a rewritten `body`: its own length, and no date of the file it came from."""
    kept = [(k, v) for k, v in headers if k.lower() not in ("content-length", "last-modified")]
    return [*kept, ("Content-Length", str(len(body)))]


def explained(app: WSGIApp) -> WSGIApp:
    """Wrap a WSGI app so that optuna-dashboard's page loads the script that writes a withheld
    importance's reason into the importance panel (`search_importances`), and serve it."""
    tag = f'<script src="{_SCRIPT_PATH}"></script>'.encode()
    script = _SCRIPT.encode()

    def answered(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == _SCRIPT_PATH:
            headers = [("Content-Type", "text/javascript"), ("Content-Length", str(len(script)))]
            start_response("200 OK", headers)
            return [script]
        if _PAGE_REQUEST.fullmatch(path) is None:
            return app(environ, start_response)
        # The whole page each time: a 304 would let a browser keep a copy cached from plain
        # optuna-dashboard on the same port, without the script.
        environ = {k: v for k, v in environ.items() if k != "HTTP_IF_MODIFIED_SINCE"}
        status, headers, body = _collected(app, environ)
        if status.startswith("200"):
            # Before the page's deferred bundle runs, so the bundle's requests are read.
            body = body.replace(b"</head>", tag + b"\n</head>", 1)
            headers = _with_length(headers, body)
        start_response(status, headers)
        return [body]

    return answered


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
        server.set_app(same_origin(explained(readable(search_importances(app, storage)))))
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
