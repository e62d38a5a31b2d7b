"""`tuner report`: figures and an HTML page from real studies trained in a temporary SQLite file."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
from matplotlib import image as mpimg
from optuna.trial import TrialState

from tests.specs import build_spec
from tests.trials import confirmation_runs
from tuner.cli import build_parser, main
from tuner.errors import EmptyStudyError, StudyNotFoundError
from tuner.execution.worker import run_worker
from tuner.spec import load_spec
from tuner.storage.rdb import open_storage
from tuner.study import lifecycle as studies
from tuner.study.importance import MIN_TRIALS, ParameterImportances, parameter_importances
from tuner.views import report

ROOT = Path(__file__).parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALWAYS = ("best_by_optimizer", "learning_curves", "history", "importance")

#: Rosenbrock with a learning-rate range of its own per optimizer, conditional knobs
#: (momentum; Adam's β's and ε), and an SGD whose fixed lr diverges.
ROSENBROCK = {
    "name": "report-rosenbrock",
    "description": "Does <script>alert('x')</script> & co get escaped?",
    "workload": {"name": "rosenbrock", "options": {"steps_per_epoch": 5}},
    "search": {
        "optimizers": ["sgd", "momentum", "adam", "sgd_hot"],
        "schedules": ["constant", "cosine"],
        "weight_decay": "off",
    },
    "optimizers": {
        "sgd": {"learning_rate": [1e-5, 1e-3]},
        "momentum": {"learning_rate": [1e-4, 3e-3]},
        "sgd_hot": {"class": "torch.optim:SGD", "learning_rate": 0.1},
    },
    "budget": {"trials": 16, "epochs": 3},
    "sampler": {"name": "grid"},
    "pruner": {"name": "none"},
}
DOUBLE_WELL = {
    "name": "report-double-well",
    "workload": {
        "name": "double_well",
        "options": {"steps_per_epoch": 2, "noise": 1.0, "start": [2.0]},
    },
    "search": {"optimizers": ["small", "large"], "weight_decay": "off"},
    "optimizers": {
        "small": {"class": "torch.optim:SGD", "learning_rate": 0.01},
        "large": {"class": "torch.optim:SGD", "learning_rate": 0.05},
    },
    "budget": {"trials": 4, "epochs": 8},
    "sampler": {"name": "grid"},
    "pruner": {"name": "none"},
}
CNN = {
    "name": "report-cnn",
    "workload": {"name": "cnn", "options": {"dataset": "digits"}},
    "search": {"optimizers": ["adam", "momentum"], "weight_decay": "off", "batch_sizes": [64]},
    "budget": {"trials": 3, "epochs": 1},
    "sampler": {"name": "grid"},
    "pruner": {"name": "none"},
}


#: Enough complete trials for importances to be shown: three optimizers on Rosenbrock, none of
#: which diverges (momentum's and Adam's knobs sampled as one_minus_<name>).
ENOUGH = {
    "name": "report-enough",
    "workload": {"name": "rosenbrock", "options": {"steps_per_epoch": 5}},
    "search": {"optimizers": ["sgd", "momentum", "adam"], "weight_decay": "off"},
    "optimizers": {
        "sgd": {"learning_rate": [1e-5, 1e-3]},
        "momentum": {"learning_rate": [1e-5, 1e-3]},
    },
    "budget": {"trials": MIN_TRIALS + 4, "epochs": 2},
    "sampler": {"name": "random"},
    "pruner": {"name": "none"},
}


def _importances(study: optuna.Study, min_trials: int = 2) -> ParameterImportances:
    """Importances over a study's trials; the tests of the evaluation itself lower the minimum
    so that small studies exercise it."""
    return parameter_importances(
        study.trials, study.direction, study.user_attrs["metric"], min_trials=min_trials
    )


def _build(url: str, data: dict) -> optuna.Study:
    spec = build_spec(data)
    studies.create_or_resume(spec, open_storage(url))
    run_worker(spec, url)
    return optuna.load_study(study_name=spec.name, storage=url)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The three studies, trained once, and a report of each."""
    root = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{root / 'studies.db'}"
    result = {"url": url, "studies": {}, "pages": {}}
    for data in (ROSENBROCK, DOUBLE_WELL, CNN, ENOUGH):
        study = _build(url, data)
        result["studies"][data["name"]] = study
        result["pages"][data["name"]] = report.write_report(
            data["name"], root / data["name"], storage=url
        )
    return result


def _assert_real_png(path: Path) -> None:
    assert path.is_file(), f"{path.name} was not written"
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert path.stat().st_size > 5_000, f"{path.name} is suspiciously small"
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 200
    assert float(np.var(pixels[..., :3])) > 0.0, f"{path.name} is one flat colour"


@pytest.mark.parametrize(
    ("name", "landscape"),
    [("report-rosenbrock", True), ("report-double-well", True), ("report-cnn", False)],
)
def test_every_figure_is_a_real_png_referenced_by_the_page(
    built: dict, name: str, landscape: bool
) -> None:
    page = built["pages"][name]
    assert page.name == "index.html"
    text = page.read_text(encoding="utf-8")
    expected = (*ALWAYS, "landscape") if landscape else ALWAYS
    for figure in expected:
        _assert_real_png(page.parent / f"{figure}.png")
        assert f'<img src="{figure}.png"' in text  # relative: the folder can be moved
    # The contour/path figure exists for landscapes only.
    assert (page.parent / "landscape.png").exists() is landscape
    assert ('src="landscape.png"' in text) is landscape
    assert sorted(p.name for p in page.parent.iterdir()) == sorted(
        ["index.html", *(f"{figure}.png" for figure in expected)]
    )


@pytest.mark.parametrize("name", ["report-rosenbrock", "report-double-well", "report-cnn"])
def test_the_page_ranks_the_top_trials_best_first(built: dict, name: str) -> None:
    study = built["studies"][name]
    text = built["pages"][name].read_text(encoding="utf-8")
    table = text.split('<table class="top-trials">', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td><td>([^<]*)</td>", table)
    complete = [
        t for t in study.trials if t.state == TrialState.COMPLETE and "diverged" not in t.user_attrs
    ]
    assert len(rows) == min(report.TOP_TRIALS, len(complete))
    assert rows[0][:2] == ("1", str(study.best_trial.number))
    values = [float(value) for _, _, value in rows]
    metric_order = sorted(values, reverse=study.direction.name == "MAXIMIZE")
    assert values == metric_order
    assert f"<td>{study.user_attrs['metric']}</td>" in text
    assert f"<td>{study.direction.name.lower()}</td>" in text
    counts = {state: sum(t.state == state for t in study.trials) for state in TrialState}
    lost = sum(bool(t.user_attrs.get("diverged")) for t in study.trials)
    assert f"{counts[TrialState.COMPLETE] - lost} complete" in text
    pruned = f"{counts[TrialState.PRUNED]} pruned"
    assert (f"{pruned}, {lost} diverged" if lost else pruned) in text
    assert f"{counts[TrialState.FAIL]} failed" in text


def test_the_page_escapes_what_it_shows(built: dict) -> None:
    text = built["pages"]["report-rosenbrock"].read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in text
    assert "<script>" not in text


def test_diverged_trials_are_reported_not_fatal(built: dict) -> None:
    study = built["studies"]["report-rosenbrock"]
    lost = [t for t in study.trials if t.user_attrs.get("diverged")]
    assert lost and all(t.params["optimizer"] == "sgd_hot" for t in lost)
    text = built["pages"]["report-rosenbrock"].read_text(encoding="utf-8")
    assert f"Diverged and failed trials ({len(lost)})" in text
    assert "diverged in epoch" in text


def test_optunas_own_evaluator_reads_per_optimizer_learning_rate_ranges(built: dict) -> None:
    """Per-optimizer ranges once made the space dynamic and Optuna's evaluators refused it;
    sampled as its position in each optimizer's range, the learning rate is one fixed
    distribution (tuner.search.space), as the dashboard's evaluator needs."""
    study = built["studies"]["report-rosenbrock"]
    importances = optuna.importance.get_param_importances(
        study,
        evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
        params=["learning_rate_in_range", "optimizer"],
    )
    assert set(importances) == {"learning_rate_in_range", "optimizer"}


def test_importance_over_the_conditional_space(built: dict) -> None:
    study = built["studies"]["report-rosenbrock"]
    importances = _importances(study)
    complete = [
        t for t in study.trials if t.state == TrialState.COMPLETE and "diverged" not in t.user_attrs
    ]

    overall = importances.overall
    assert overall is not None
    assert {"learning_rate_in_range", "optimizer", "schedule"} <= set(overall.importances)
    assert overall.trials == len(complete)
    assert all(math.isfinite(v) and v >= 0 for v in overall.importances.values())
    assert sum(overall.importances.values()) == pytest.approx(1.0)

    with_momentum = [t for t in complete if "one_minus_momentum" in t.params]
    with_beta1 = [t for t in complete if "one_minus_beta1" in t.params]
    assert {t.params["optimizer"] for t in with_momentum} == {"momentum"}
    assert {t.params["optimizer"] for t in with_beta1} == {"adam"}
    assert importances.conditional["one_minus_momentum"].trials == len(with_momentum)
    assert importances.conditional["one_minus_beta1"].trials == len(with_beta1)
    # Conditional parameters only where present: no SGD trial has one.
    assert set(importances.conditional) <= {
        "one_minus_momentum",
        "one_minus_beta1",
        "one_minus_beta2",
        "eps",
    }
    for group in importances.conditional.values():
        assert "optimizer" not in group.importances  # one optimizer type per group here
        assert all(math.isfinite(v) for v in group.importances.values())
        assert sum(group.importances.values()) == pytest.approx(1.0)


def test_importance_skips_what_cannot_be_evaluated(built: dict) -> None:
    study = built["studies"]["report-cnn"]  # trials: adam, momentum, adam
    importances = _importances(study)
    assert importances.overall is not None
    assert {"learning_rate_in_range", "optimizer"} <= set(importances.overall.importances)
    assert sum(importances.overall.importances.values()) == pytest.approx(1.0)
    # One momentum trial: its momentum has nothing to be compared with.
    assert "one_minus_momentum" not in importances.conditional
    assert "1 complete trial" in importances.skipped["one_minus_momentum"]


def test_a_study_with_one_complete_trial_still_reports(tmp_path: Path, sqlite_url: str) -> None:
    data = {**DOUBLE_WELL, "name": "single", "budget": {"trials": 1, "epochs": 2}}
    _build(sqlite_url, data)
    importances = _importances(optuna.load_study(study_name="single", storage=sqlite_url))
    assert importances.overall is None and not importances.ped_anova
    assert importances.withheld.startswith("1 complete trial, ")
    page = report.write_report("single", tmp_path / "out", storage=sqlite_url)
    _assert_real_png(page.parent / "importance.png")


def test_an_unknown_study_is_an_error_that_writes_nothing(built: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(StudyNotFoundError, match="report-rosenbrock"):
        report.write_report("report-rosenbrok", out, storage=built["url"])
    assert not out.exists()


def test_an_empty_study_is_an_error_that_writes_nothing(sqlite_url: str, tmp_path: Path) -> None:
    optuna.create_study(study_name="empty", storage=sqlite_url)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(EmptyStudyError, match="no completed trial"):
        report.write_report("empty", out, storage=sqlite_url)
    assert list(out.iterdir()) == []
    with pytest.raises(EmptyStudyError):
        report.write_report("empty", tmp_path / "never", storage=sqlite_url)
    assert not (tmp_path / "never").exists()


def test_the_command_writes_the_report_where_asked(
    built: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert build_parser().parse_args(["report", "s"]).out == "report"
    out = tmp_path / "cnn-report"
    # A previous landscape report in the same folder: its landscape figure must not linger.
    (out).mkdir()
    (out / "landscape.png").write_bytes(PNG_MAGIC)
    assert main(["report", "report-cnn", "--out", str(out), "--storage", built["url"]]) == 0
    assert str(out / "index.html") in capsys.readouterr().out
    assert (out / "index.html").is_file()
    assert not (out / "landscape.png").exists()


def test_no_importance_is_shown_below_the_minimum_and_the_page_says_why(built: dict) -> None:
    study = built["studies"]["report-rosenbrock"]
    complete = sum(
        t.state == TrialState.COMPLETE and "diverged" not in t.user_attrs for t in study.trials
    )
    assert complete < MIN_TRIALS
    withheld = _importances(study, min_trials=MIN_TRIALS)
    assert withheld.ped_anova == {} and withheld.overall is None and not withheld.conditional
    assert f"{complete} complete trials" in withheld.withheld
    assert f"at least {MIN_TRIALS}" in withheld.withheld
    text = built["pages"]["report-rosenbrock"].read_text(encoding="utf-8")
    assert "No importance shown" in text and f"at least {MIN_TRIALS}" in text
    assert "PED-ANOVA</td>" not in text and "fANOVA</td>" not in text


@pytest.mark.filterwarnings("ignore:PedAnovaImportanceEvaluator computes")
def test_ped_anova_and_fanova_side_by_side_under_the_names_users_know(built: dict) -> None:
    study = built["studies"]["report-enough"]
    found = _importances(study, min_trials=MIN_TRIALS)
    assert found.withheld is None
    # Adam's learning-rate range is not SGD's: the rate is sampled as its position in range.
    assert {"optimizer", "learning_rate_in_range"} <= set(found.ped_anova)
    assert found.overall is not None and "learning_rate_in_range" in found.overall.importances
    # PED-ANOVA is computed as optuna-dashboard computes it, on the study itself.
    expected = optuna.importance.get_param_importances(
        study,
        target=lambda trial: trial.value,
        evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
    )
    assert found.ped_anova == pytest.approx(dict(expected), rel=0, abs=0)
    text = built["pages"]["report-enough"].read_text(encoding="utf-8")
    assert "<td>PED-ANOVA</td>" in text and "<td>fANOVA</td>" in text
    # Knobs sampled as 1 − value carry the name users know; the sampled scale is said once.
    assert "one_minus_momentum" in found.ped_anova
    assert "<td>momentum</td>" in text and "<td>one_minus_momentum</td>" not in text
    assert text.count("sampled as `one_minus_&lt;name&gt;` = 1 − &lt;name&gt;") == 1
    assert "momentum are sampled" in text


@pytest.mark.filterwarnings("ignore:PedAnovaImportanceEvaluator computes")
def test_confirmation_runs_are_left_out_of_importances(built: dict) -> None:
    study = built["studies"]["report-enough"]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    # Three re-runs of the best trial on other seeds, as confirmation records them.
    best = min(complete, key=lambda trial: trial.value)
    reruns = confirmation_runs(best)
    with_reruns = parameter_importances([*study.trials, *reruns], study.direction, "loss")
    alone = parameter_importances(study.trials, study.direction, "loss")
    assert with_reruns.left_out == 3 and alone.left_out == 0
    assert with_reruns.ped_anova == alone.ped_anova
    assert with_reruns.overall == alone.overall


def test_every_optimizer_appears_in_the_per_optimizer_figure(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An optimizer pruned or diverged everywhere is a finding: it keeps its place in the
    figure, marked with what became of its trials; losses 16 decades apart are on a log scale."""
    from tests.study.test_results import study_with, trial
    from tuner.views.report import figures
    from tuner.views.report.snapshot import StudySnapshot

    trials = [
        trial("sgd", 0.5),
        trial("adam", 2.5e-16),
        trial("lion", None, TrialState.PRUNED),
        trial("lion", None, TrialState.PRUNED),
        trial("lion", math.inf, diverged="diverged in epoch 1: loss nan"),
    ]
    study = study_with(sqlite_url, trials)
    study.set_user_attr("spec", {"search": {"optimizers": ["sgd", "adam", "lion"]}})
    snapshot = StudySnapshot.read(study, sqlite_url)
    drawn = []
    monkeypatch.setattr(figures, "save", lambda figure, path: drawn.append(figure) or path)
    figures.best_by_optimizer(snapshot, figures.colours(snapshot), tmp_path / "best.png")
    (axes,) = drawn[0].axes
    labels = [label.get_text() for label in axes.get_xticklabels()]
    assert labels == ["adam\ntrial 1", "sgd\ntrial 0", "lion\nno result"]
    assert [text.get_text() for text in axes.texts][-1] == "2 pruned\n1 diverged"
    assert axes.get_yscale() == "log"


def test_the_top_trials_name_the_learning_rate_once(built: dict) -> None:
    text = built["pages"]["report-rosenbrock"].read_text(encoding="utf-8")
    table = text.split('<table class="top-trials">', 1)[1].split("</table>", 1)[0]
    header = table.split("</tr>", 1)[0]
    assert "learning rate" not in header and "configuration" in header
    assert "lr=" in table


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:PedAnovaImportanceEvaluator computes")
def test_the_shipped_quickstart_ends_with_importances(sqlite_url: str) -> None:
    """`make demo` runs studies/quickstart.toml: it must end with enough results for the
    importances it exists to show (one worker here; two interleave differently, but with no
    pruner only a divergence takes a trial from the count)."""
    spec = load_spec(ROOT / "studies" / "quickstart.toml")
    studies.create_or_resume(spec, open_storage(sqlite_url))
    run_worker(spec, sqlite_url)
    study = optuna.load_study(study_name="quickstart", storage=sqlite_url)
    importances = parameter_importances(study.trials, study.direction, "loss")
    assert importances.withheld is None
    assert "optimizer" in importances.overall.importances
    assert "optimizer" in importances.ped_anova


def test_the_landscape_says_what_its_paths_are(
    built: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only each epoch's end is recorded: the figure draws those positions as dots that show
    on their lines, and says that the straight lines between them are no optimizer's steps."""
    import importlib

    from tuner.views.report import figures
    from tuner.views.report.snapshot import StudySnapshot

    # The module (the package names its function `landscape` too).
    landscape = importlib.import_module("tuner.views.report.landscape")
    study = built["studies"]["report-rosenbrock"]
    snapshot = StudySnapshot.read(study, built["url"])
    drawn = []
    monkeypatch.setattr(landscape, "save", lambda figure, path: drawn.append(figure) or path)
    landscape.landscape(snapshot, figures.colours(snapshot), tmp_path / "landscape.png")
    (axes,) = drawn[0].axes
    assert "each epoch's end" in axes.get_title()
    assert "steps within an epoch" in axes.get_xlabel() and "not recorded" in axes.get_xlabel()
    paths = [line for line in axes.get_lines() if len(line.get_xdata()) > 1]
    assert paths
    for line in paths:
        assert line.get_marker() == "o" and line.get_markersize() > line.get_linewidth()


def test_the_last_diverged_trial_is_marked_whole_in_the_history(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.study.test_results import study_with, trial
    from tuner.views.report import figures
    from tuner.views.report.snapshot import StudySnapshot

    trials = [trial("sgd", 10.0**-index) for index in range(30)]
    trials.append(trial("sgd", math.inf, diverged="diverged in epoch 1: loss nan"))
    study = study_with(sqlite_url, trials)
    study.set_user_attr("spec", {"search": {"optimizers": ["sgd"]}})
    snapshot = StudySnapshot.read(study, sqlite_url)
    drawn = []
    monkeypatch.setattr(figures, "save", lambda figure, path: drawn.append(figure) or path)
    figures.history(snapshot, figures.colours(snapshot), tmp_path / "history.png")
    (axes,) = drawn[0].axes
    drawn[0].canvas.draw()
    low, high = axes.get_xlim()
    assert low <= -1.0 and high >= 30 + 1.0  # a trial's width of room beyond the last
    # The legend sits beside the axes, over none of the markers.
    legend = axes.get_legend().get_window_extent()
    assert legend.x0 >= axes.get_window_extent().x1
