"""`tuner dashboard`: the real optuna-dashboard on a real study, seen through a headless browser.

The browser is Debian's chromium (``apt-get install chromium``) driven by Playwright; without
it the browser test skips with the reason, except in CI (``CI`` set), where it fails.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from optuna.trial import TrialState

from tests.processes import wait_while_progressing
from tests.specs import build_spec
from tests.trials import confirmation_runs
from tuner.execution.worker import run_worker
from tuner.spec import StudySpec
from tuner.storage import artifacts
from tuner.storage.artifacts import LearningCurveRecorder, artifact_dir
from tuner.storage.rdb import open_storage
from tuner.study import lifecycle as studies
from tuner.study.importance import MIN_TRIALS, ped_anova, search_results
from tuner.study.note import NOTE_PIECE, study_note
from tuner.study.results import DIVERGED_ATTR

ROOT = Path(__file__).parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WORKER = [sys.executable, "-m", "tuner.cli", "worker"]
DASHBOARD = [sys.executable, "-m", "tuner.cli", "dashboard"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str, timeout: float = 30.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def stop(process: subprocess.Popen) -> None:
    """End a process this test started: politely, then for sure."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def dashboard(storage_url: str, log: Path) -> Iterator[str]:
    """`tuner dashboard` on a free port, as a real process; yields its address once it answers.

    Its output goes to `log` (a file, not a pipe, which could fill up and block it).
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [*DASHBOARD, "--storage", storage_url, "--port", str(port)],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            limit = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    raise AssertionError(f"tuner dashboard exited early: {log.read_text()}")
                try:
                    get_json(f"{base}/api/meta", timeout=2)
                    break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    if time.monotonic() > limit:
                        raise AssertionError("tuner dashboard did not answer in 60 s") from None
                    time.sleep(0.2)
            yield base
        finally:
            stop(process)


def rosenbrock_spec(name: str, trials: int, steps: int = 50, **budget: int) -> StudySpec:
    return build_spec(
        name=name,
        description="Which optimizer gets down Rosenbrock's valley?",
        workload={"name": "rosenbrock", "options": {"steps_per_epoch": steps}},
        search={
            "optimizers": ["sgd", "adam", "rmsprop"],
            "weight_decay": "off",
            "grad_clipping": "search",
        },
        # Below Rosenbrock's divergence for plain SGD, so every trial completes; the
        # learning-rate range still differs per optimizer (conditional parameters).
        optimizers={"sgd": {"learning_rate": [1e-5, 1e-3]}},
        budget={"trials": trials, "epochs": 3, **budget},
        sampler={"name": "random"},
        pruner={"name": "none"},
    )


def finished_trials(storage_url: str, name: str) -> int:
    study = optuna.load_study(study_name=name, storage=open_storage(storage_url))
    return sum(trial.state.is_finished() for trial in study.get_trials(deepcopy=False))


def study_id(base: str, name: str) -> int:
    summaries = get_json(f"{base}/api/studies")["study_summaries"]
    return next(summary["study_id"] for summary in summaries if summary["study_name"] == name)


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A finished Rosenbrock study of three optimizers: each trial COMPLETE, with its curve,
    and just enough of them (MIN_TRIALS) for the dashboard to show importances.

    Each trial's curve is a PNG plot, however quickly it trained: drawing is taken to cost
    nothing while the study is built (a trial that trains for less than a drawing costs gets
    CSV). Built once for the tests
    that only look at it (in a home of its own, as conftest's isolated_home gives each test)."""
    folder = tmp_path_factory.mktemp("finished")
    url = f"sqlite:///{folder / 'studies.db'}"
    with pytest.MonkeyPatch.context() as environment:
        environment.setattr(LearningCurveRecorder, "drawing_seconds", 0.0)
        environment.setenv("XDG_DATA_HOME", str(folder / "data"))
        environment.setenv("XDG_CACHE_HOME", str(folder / "cache"))
        environment.delenv("TUNER_STORAGE", raising=False)
        spec = rosenbrock_spec("valley", trials=MIN_TRIALS, steps=100)
        studies.create_or_resume(spec, open_storage(url))
        run_worker(spec, url)
    return url


@pytest.fixture(scope="module")  # module scope: checked before the module's study is built
def chromium() -> Iterator:
    """A headless Debian chromium under Playwright; skips without it (fails in CI)."""
    if not CHROMIUM.exists():
        reason = (
            f"{CHROMIUM} is missing: apt-get update && DEBIAN_FRONTEND=noninteractive "
            "apt-get install -y --no-install-recommends chromium"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.mark.browser
def test_the_study_its_importances_note_and_curves_show_in_a_browser(
    chromium, finished_study: str, tmp_path: Path
) -> None:
    with dashboard(finished_study, tmp_path / "dashboard.log") as base:
        identifier = study_id(base, "valley")
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))

        # The study's page: its history and its hyperparameter-importance chart, whose bars
        # are the parameter names, drawn once the dashboard has computed PED-ANOVA.
        page.goto(f"{base}/dashboard/studies/{identifier}")
        bars = page.wait_for_function(
            """() => {
                const plot = [...document.querySelectorAll('.js-plotly-plot')].find(
                    p => p.textContent.includes('Hyperparameter Importance')
                         && p.querySelector('.ytick'));
                return plot && [...plot.querySelectorAll('.ytick text')].map(t => t.textContent);
            }""",
            timeout=30_000,
        ).json_value()
        assert {"learning_rate_in_range", "optimizer"} <= set(bars), bars
        assert page.get_by_text("valley (id=").count() > 0  # the study's own page
        page.screenshot(path=tmp_path / "study.png")
        chart = page.locator(".js-plotly-plot", has_text="Hyperparameter Importance").first
        chart.screenshot(path=tmp_path / "importance.png")

        # The note written when the study was created, rendered as the dashboard shows it.
        page.goto(f"{base}/dashboard/studies/{identifier}/note")
        page.get_by_text("Rosenbrock's valley from (-1, 1)").first.wait_for(timeout=15_000)
        note = page.inner_text("body")
        for words in (
            "rmsprop",
            "learning rate 0.0001 – 0.1",
            f"{MIN_TRIALS} trials",
            "Pruner: none",
        ):
            assert words in note, words
        page.screenshot(path=tmp_path / "note.png")

        # A trial's learning curve: shown on its page as an image the dashboard serves.
        page.goto(f"{base}/dashboard/studies/{identifier}/trials")
        image = page.locator("img[src*='/artifacts/']").first
        image.wait_for(timeout=15_000)
        response = page.request.get(base + image.get_attribute("src"))
        assert response.status == 200
        assert response.headers["content-type"] == "image/png"
        assert response.body().startswith(b"\x89PNG") and len(response.body()) < 20_000
        page.screenshot(path=tmp_path / "trials.png")
        assert not errors, errors
    # Every COMPLETE trial has its curve, in the folder next to the database.
    trials = optuna.load_study(study_name="valley", storage=finished_study).trials
    assert all(trial.state == TrialState.COMPLETE for trial in trials)
    assert all(
        sum(key.startswith("artifacts:") for key in trial.system_attrs) == 1 for trial in trials
    )
    next_to_the_database = Path(finished_study.removeprefix("sqlite:///")).parent / "artifacts"
    curves = [path for path in next_to_the_database.iterdir() if path.is_file()]
    assert len(curves) == len(trials)
    # Beside them only the checkpoints' folder, empty once its trials finished.
    assert not [p for p in (next_to_the_database / "checkpoints").rglob("*") if p.is_file()]
    printed = (tmp_path / "dashboard.log").read_text()
    assert f"{base}/dashboard" in printed and "studies.db" in printed, printed


@pytest.mark.browser
def test_withheld_importances_are_explained_in_the_panel_not_an_error(
    chromium, sqlite_url: str, tmp_path: Path
) -> None:
    spec = rosenbrock_spec("few", trials=3, steps=5)
    studies.create_or_resume(spec, open_storage(sqlite_url))
    run_worker(spec, sqlite_url)
    with dashboard(sqlite_url, tmp_path / "dashboard.log") as base:
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{base}/dashboard/studies/{study_id(base, 'few')}")
        panel = page.locator("#graph-hyperparameter-importances")
        panel.get_by_text("Importance not shown").wait_for(timeout=30_000)
        words = panel.inner_text()
        page.screenshot(path=tmp_path / "withheld.png")
        body = page.inner_text("body")
    assert "3 complete trials" in words and f"at least {MIN_TRIALS}" in words, words
    assert "Failed to load" not in body, body
    assert not errors, errors


@pytest.fixture
def steep_study(sqlite_url: str) -> str:
    """A study where one optimizer diverges: plain SGD at 0.1 on Rosenbrock's walls."""
    spec = build_spec(
        name="steep",
        workload={"name": "rosenbrock", "options": {"steps_per_epoch": 20}},
        search={"optimizers": ["adam", "sgd_hot"], "weight_decay": "off"},
        optimizers={"sgd_hot": {"class": "torch.optim:SGD", "learning_rate": 0.1}},
        budget={"trials": 2, "epochs": 3},
        sampler={"name": "grid"},
        pruner={"name": "none"},
    )
    studies.create_or_resume(spec, open_storage(sqlite_url))
    run_worker(spec, sqlite_url)
    return sqlite_url


def test_long_attributes_are_shortened_and_a_diverged_trial_says_so_first(
    steep_study: str, tmp_path: Path
) -> None:
    trials = optuna.load_study(study_name="steep", storage=steep_study).trials
    (diverged,) = [t for t in trials if DIVERGED_ATTR in t.user_attrs]
    with dashboard(steep_study, tmp_path / "dashboard.log") as base:
        detail = get_json(f"{base}/api/studies/{study_id(base, 'steep')}")
        (summary,) = get_json(f"{base}/api/studies")["study_summaries"]
    for owner in (detail, summary):
        spec = {a["key"]: a["value"] for a in owner["user_attrs"]}["spec"]
        assert "Note" in spec and len(spec) < 100, spec
    shown = {trial["number"]: trial for trial in detail["trials"]}
    for trial in trials:
        attrs = shown[trial.number]["user_attrs"]
        curve = {a["key"]: a["value"] for a in attrs}["curve"]
        assert "learning curve" in curve and len(curve) < 100, curve
        # Shortened, none hidden: the config one setting a line.
        keys = {a["key"] for a in attrs}
        assert keys - {k for k in keys if k.startswith("config.")} == set(trial.user_attrs) - {
            "config"
        }
        config = trial.user_attrs["config"]
        assert {a["key"]: a["value"] for a in attrs}["config.optimizer"] == config["optimizer"]
        lr = {a["key"]: a["value"] for a in attrs}["config.learning_rate"]
        assert float(lr) == config["learning_rate"]
    first = shown[diverged.number]["user_attrs"][0]
    assert first == {"key": DIVERGED_ATTR, "value": diverged.user_attrs[DIVERGED_ATTR]}
    note = shown[diverged.number]["note"]
    assert note["body"].startswith(f"**Diverged**: {diverged.user_attrs[DIVERGED_ATTR]}")
    assert note["version"] == 0  # never saved: editing it in the dashboard saves the first
    # The database keeps the whole record for tuner report and best_config().
    (complete,) = [t for t in trials if t is not diverged]
    assert [row["epoch"] for row in complete.user_attrs["curve"]] == [1, 2, 3]


@pytest.mark.browser
def test_trial_pages_fit_the_window_and_a_diverged_one_is_marked(
    chromium, steep_study: str, tmp_path: Path
) -> None:
    trials = optuna.load_study(study_name="steep", storage=steep_study).trials
    (diverged,) = [t for t in trials if DIVERGED_ATTR in t.user_attrs]
    with dashboard(steep_study, tmp_path / "dashboard.log") as base:
        identifier = study_id(base, "steep")
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        widths = {}
        for trial in trials:
            page.goto(f"{base}/dashboard/studies/{identifier}/trials?numbers={trial.number}")
            page.get_by_text(f"Trial {trial.number} (trial_id=").first.wait_for(timeout=30_000)
            page.get_by_text("User Attributes").first.wait_for(timeout=15_000)
            widths[trial.number] = page.evaluate("document.documentElement.scrollWidth")
            if trial is diverged:
                text = page.inner_text("body")
        page.goto(f"{base}/dashboard/studies/{identifier}/analytics")
        page.screenshot(path=tmp_path / "study.png")
    assert all(width <= 1400 for width in widths.values()), widths
    assert f"Diverged: {diverged.user_attrs[DIVERGED_ATTR]}" in text, text


def test_the_note_and_curves_through_the_dashboard_api(finished_study: str, tmp_path: Path) -> None:
    with dashboard(finished_study, tmp_path / "dashboard.log") as base:
        detail = get_json(f"{base}/api/studies/{study_id(base, 'valley')}")
        note = detail["note"]["body"]
        assert note.startswith("# valley\n\nWhich optimizer gets down Rosenbrock's valley?")
        assert "`loss`, minimized" in note and "Sampler: random sampling; seed 0" in note
        assert f"shown once the study has {MIN_TRIALS} complete trials" in note
        assert detail["objective_names"] == ["loss"]
        trial = detail["trials"][0]
        (artifact,) = trial["artifacts"]
        assert artifact["filename"] == f"learning_curve_trial_{trial['number']}.png"
        url = f"{base}/artifacts/{trial['study_id']}/{trial['trial_id']}/{artifact['artifact_id']}"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.headers["Content-Type"] == "image/png"
            assert response.read(8) == b"\x89PNG\r\n\x1a\n"


def test_artifacts_are_readable_by_the_dashboards_own_page_only(
    finished_study: str, tmp_path: Path
) -> None:
    """optuna-dashboard answers artifact requests with ``Access-Control-Allow-Origin: *``:
    any web page the user visits could read a local dashboard's curves. No answer says so."""
    with dashboard(finished_study, tmp_path / "dashboard.log") as base:
        detail = get_json(f"{base}/api/studies/{study_id(base, 'valley')}")
        trial = detail["trials"][0]
        (artifact,) = trial["artifacts"]
        pages = [
            f"{base}/artifacts/{trial['study_id']}/{trial['trial_id']}/{artifact['artifact_id']}",
            f"{base}/api/studies/{trial['study_id']}",
            f"{base}/dashboard",
        ]
        for page in pages:
            request = urllib.request.Request(page, headers={"Origin": "https://elsewhere.example"})
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200
                assert "Access-Control-Allow-Origin" not in response.headers, page


def plain_dashboard_importances(
    storage_url: str, identifier: int, objective: int = 0
) -> dict[str, tuple[float, str]]:
    """What optuna-dashboard's own app, unwrapped, answers for a study's importances."""
    import optuna_dashboard

    environ = {"PATH_INFO": f"/api/studies/{identifier}/param_importances"}
    setup_testing_defaults(environ)
    statuses: list[str] = []
    app = optuna_dashboard.wsgi(open_storage(storage_url))
    body = b"".join(app(environ, lambda status, headers, *_: statuses.append(status)))
    assert statuses == ["200 OK"], body
    return by_name(json.loads(body)["param_importances"][objective])


def served_importances(base: str, identifier: int) -> dict[str, tuple[float, str]]:
    """What `tuner dashboard` answers for a study's importances."""
    (importances,) = get_json(f"{base}/api/studies/{identifier}/param_importances")[
        "param_importances"
    ]
    return by_name(importances)


def by_name(importances: list[dict]) -> dict[str, tuple[float, str]]:
    """An importance chart's rows by parameter (ties at 0 come in no fixed order)."""
    return {row["name"]: (row["importance"], row["distribution"]) for row in importances}


@pytest.mark.filterwarnings("ignore:PedAnovaImportanceEvaluator computes")
def test_importances_are_withheld_below_the_minimum_and_read_the_search_as_the_report_does(
    sqlite_url: str, tmp_path: Path
) -> None:
    for spec in (
        rosenbrock_spec("few", trials=4, steps=5),
        rosenbrock_spec("enough", trials=MIN_TRIALS + 2, steps=5),
    ):
        studies.create_or_resume(spec, open_storage(sqlite_url))
        run_worker(spec, sqlite_url)
    study = optuna.load_study(study_name="enough", storage=sqlite_url)
    best = study.best_trial
    with dashboard(sqlite_url, tmp_path / "dashboard.log") as base:
        refused = get_json(f"{base}/api/studies/{study_id(base, 'few')}/param_importances")
        enough = study_id(base, "enough")
        shown = served_importances(base, enough)
        # Above the minimum: optuna-dashboard's own PED-ANOVA, name, number and distribution.
        plain_before = plain_dashboard_importances(sqlite_url, enough)
        assert shown == plain_before
        # Confirmation runs of the best configuration: plain optuna-dashboard counts them,
        # tuner's chart, like the report, reads the search alone.
        study.add_trials(confirmation_runs(best))
        after = served_importances(base, enough)
    # No bars, and the reason (an error would pop a toast on the page: no error here).
    assert refused["param_importances"] == []
    reason = refused["withheld"]
    assert "4 complete trials" in reason and f"at least {MIN_TRIALS}" in reason, reason
    assert after == shown
    assert plain_dashboard_importances(sqlite_url, enough) != plain_before
    ours = ped_anova(search_results(study.trials), study.direction)
    assert {name: importance for name, (importance, _) in shown.items()} == ours
    assert {"learning_rate_in_range", "optimizer"} <= set(ours)  # the optimizers' ranges differ


def test_a_study_of_several_objectives_gets_the_dashboards_own_importances(
    sqlite_url: str, tmp_path: Path
) -> None:
    # Not one of tuner's (it has one metric): the request goes to optuna-dashboard unchanged.
    study = optuna.create_study(
        study_name="pareto", storage=sqlite_url, directions=["minimize"] * 2
    )
    study.optimize(
        lambda trial: (trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)), 4
    )
    with dashboard(sqlite_url, tmp_path / "dashboard.log") as base:
        identifier = study_id(base, "pareto")
        shown = get_json(f"{base}/api/studies/{identifier}/param_importances")
    assert len(shown["param_importances"]) == 2  # one chart per objective
    for objective, importances in enumerate(shown["param_importances"]):
        plain = plain_dashboard_importances(sqlite_url, identifier, objective)
        assert by_name(importances) == plain and set(plain) == {"x", "y"}


def test_the_dashboard_reads_the_note_a_new_study_gets(sqlite_url: str) -> None:
    # tuner writes the note in optuna-dashboard's layout without importing it (tuner.study.note).
    spec = build_spec(
        name="valley",
        workload={"name": "rosenbrock"},
        search={
            "optimizers": ["sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"],
            "schedules": ["constant", "cosine"],
            "lookahead": "search",
        },
        budget={"trials": 2, "epochs": 1},
    )
    study = studies.create_or_resume(spec, open_storage(sqlite_url))
    from optuna_dashboard import get_note

    assert len(study_note(spec)) > NOTE_PIECE  # stored in pieces
    assert get_note(study) == study_note(spec)


def test_a_resumed_study_keeps_its_note(sqlite_url: str) -> None:
    spec = rosenbrock_spec("valley", trials=2)
    study = studies.create_or_resume(spec, open_storage(sqlite_url))
    from optuna_dashboard import get_note, save_note

    save_note(study, "my own words")  # a person edited the note in the dashboard
    resumed = studies.create_or_resume(spec, open_storage(sqlite_url))
    assert get_note(resumed) == "my own words"


def test_a_curve_that_cannot_be_stored_never_fails_its_trial(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "artifacts").write_text("a file where the artifact folder should be")
    spec = rosenbrock_spec("valley", trials=2)
    studies.create_or_resume(spec, open_storage(sqlite_url))
    run_worker(spec, sqlite_url)
    trials = optuna.load_study(study_name="valley", storage=sqlite_url).trials
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 2
    assert not any(key.startswith("artifacts:") for t in trials for key in t.system_attrs)
    assert "learning-curve artifact not uploaded" in caplog.text


def test_a_trial_quicker_than_its_plot_gets_its_curve_as_csv(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drawing costs more than any of these trials trains (it is not measured before a first
    drawing): each gets the numbers, readable as the dashboard shows them."""
    monkeypatch.setattr(artifacts, "CURVE_DRAW_SECONDS", math.inf)
    spec = rosenbrock_spec("quick", trials=4, steps=5)
    studies.create_or_resume(spec, open_storage(sqlite_url))
    run_worker(spec, sqlite_url)
    trials = optuna.load_study(study_name="quick", storage=sqlite_url).trials
    for trial in trials:
        (key,) = [key for key in trial.system_attrs if key.startswith("artifacts:")]
        artifact = json.loads(trial.system_attrs[key])
        assert artifact["filename"] == f"learning_curve_trial_{trial.number}.csv"
        stored = (tmp_path / "artifacts" / artifact["artifact_id"]).read_text().splitlines()
        assert stored[0].split(",")[:3] == ["epoch", "train_loss", "learning_rate"]
        assert len(stored) == 1 + len(trial.user_attrs["curve"])


def test_where_artifacts_live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert artifact_dir(f"sqlite:///{tmp_path}/db/studies.db") == tmp_path / "db" / "artifacts"
    postgres = "postgresql+psycopg://tuner:secret@db.cluster/studies"
    assert artifact_dir(postgres) == tmp_path / "data" / "tuner" / "artifacts"  # XDG_DATA_HOME
    monkeypatch.setenv("TUNER_ARTIFACT_DIR", str(tmp_path / "shared"))
    assert artifact_dir(postgres) == tmp_path / "shared"
    assert artifact_dir("sqlite:///:memory:") == tmp_path / "shared"
    assert artifact_dir(open_storage(f"sqlite:///{tmp_path}/studies.db")) == tmp_path / "artifacts"


def test_a_port_in_use_is_a_clear_error(sqlite_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*DASHBOARD, "--storage", sqlite_url, "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stderr
    assert f"port {port}" in result.stderr and "--port" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert "http://" not in result.stdout


def test_a_study_runs_clean_while_the_dashboard_polls_its_sqlite_file(
    sqlite_url: str, tmp_path: Path
) -> None:
    """optuna-dashboard issue 545: its polling must not fail trials with 'database is locked'."""
    trials = MIN_TRIALS + 4  # the last ones train while the importances are computed
    # 2,000 steps an epoch: a trial trains for a few tenths of a second, so the study runs for
    # seconds, many poll cycles, whatever the machine (at 50 steps the whole study could end
    # between two polls and the poller never saw a running trial).
    spec = rosenbrock_spec("polled", trials=trials, steps=2000)
    studies.create_or_resume(spec, open_storage(sqlite_url))
    with dashboard(sqlite_url, tmp_path / "dashboard.log") as base:
        identifier = study_id(base, "polled")
        pages = [
            f"{base}/api/studies",
            f"{base}/api/studies/{identifier}",
            f"{base}/api/studies/{identifier}/param_importances",
        ]
        answers: list[int | str] = []
        seen_running: list[int] = []
        stop_polling = threading.Event()

        def poll() -> None:  # the dashboard page in a browser tab, a little impatient
            while not stop_polling.is_set():
                for page in pages:
                    try:
                        with urllib.request.urlopen(page, timeout=60) as response:
                            body = json.load(response)
                            # Too few complete trials yet: the importance request gets why.
                            withheld = "importance not shown" in body.get("withheld", "")
                            answers.append("withheld" if withheld else response.status)
                            if page.endswith(str(identifier)):
                                states = [t["state"] for t in body["trials"]]
                                seen_running.append(states.count("Running"))
                    except urllib.error.HTTPError as error:
                        answers.append(error.code)
                stop_polling.wait(0.2)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        logs = [tmp_path / f"worker-{index}.log" for index in range(2)]
        workers: list[subprocess.Popen] = []
        try:
            with ExitStack() as files:
                for log in logs:
                    workers.append(
                        subprocess.Popen(
                            [*WORKER, "polled", "--storage", sqlite_url, "--threads", "1"],
                            cwd=ROOT,
                            stdout=files.enter_context(open(log, "w")),
                            stderr=subprocess.STDOUT,
                        )
                    )
                # However slowly a loaded machine trains, so long as trials keep finishing.
                wait_while_progressing(workers, lambda: finished_trials(sqlite_url, "polled"))
                for worker, log in zip(workers, logs, strict=True):
                    assert worker.returncode == 0, log.read_text()
        finally:
            for worker in workers:
                stop(worker)
            stop_polling.set()
            poller.join(timeout=60)
    finished = optuna.load_study(study_name="polled", storage=sqlite_url).trials
    reasons = [trial.user_attrs.get("fail_reason", "") for trial in finished]
    assert not any("database is locked" in reason for reason in reasons), reasons
    assert [trial.state for trial in finished] == [TrialState.COMPLETE] * trials, reasons
    assert 200 in answers and set(answers) <= {200, "withheld"}, set(answers)
    assert len(answers) >= 20  # the dashboard was polled throughout, not once
    assert max(seen_running, default=0) > 0  # and while trials were running
