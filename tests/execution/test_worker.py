"""The worker loop against real SQLite and PostgreSQL: budgets, failures, resumes, races."""

from __future__ import annotations

import math
import multiprocessing
import threading
from collections.abc import Callable
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from tests.specs import build_spec
from tuner.errors import EmptyStudyError, SpecError
from tuner.execution.worker import run_worker
from tuner.search.samplers import make_sampler
from tuner.search.space import sample_config
from tuner.spec import StudySpec
from tuner.storage.rdb import open_storage
from tuner.study import lifecycle as studies
from tuner.study.best import best_config
from tuner.study.results import trial_config


def landscape_spec(name: str, **sections: Any) -> StudySpec:
    landscape = {
        "search": {"optimizers": ["sgd", "adam"], "weight_decay": "off"},
        "optimizers": {"sgd": {"learning_rate": [1e-5, 1e-3]}},
        "budget": {"trials": 12, "epochs": 2},
    }
    return build_spec(landscape, name=name, **sections)


def _worker_process(spec_data: dict[str, Any], url: str, name: str) -> None:
    run_worker(StudySpec.model_validate(spec_data), url, worker=name)


def test_workers_in_separate_processes_spend_the_budget_exactly(
    storage_url: str, study_name: str
) -> None:
    spec = landscape_spec(study_name, budget={"trials": 40, "epochs": 1})
    studies.create_or_resume(spec, open_storage(storage_url))
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker_process, args=(spec.to_dict(), storage_url, f"w{i}"))
        for i in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0

    trials = optuna.load_study(study_name=study_name, storage=open_storage(storage_url)).trials
    assert sorted(trial.number for trial in trials) == list(range(40))
    assert all(trial.state in (TrialState.COMPLETE, TrialState.PRUNED) for trial in trials)
    # Every trial was claimed by exactly one worker: its attributes name a single worker
    # and its configuration was sampled once.
    assert {trial.user_attrs["worker"] for trial in trials} <= {"w0", "w1", "w2"}
    assert all(
        trial.params["optimizer"] == trial.user_attrs["config"]["optimizer"] for trial in trials
    )


def test_trial_records_what_optuna_has_no_column_for(storage_url: str, study_name: str) -> None:
    spec = landscape_spec(study_name, budget={"trials": 3, "epochs": 2}, pruner={"name": "none"})
    studies.create_or_resume(spec, open_storage(storage_url))
    run_worker(spec, storage_url, worker="me")
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
    assert study.user_attrs["spec"]["name"] == study_name
    for trial in study.trials:
        attrs = trial.user_attrs
        assert attrs["worker"] == "me" and attrs["device"] == "cpu"
        assert attrs["epochs_run"] == 2 and len(attrs["curve"]) == 2
        assert attrs["wall_seconds"] > 0 and isinstance(attrs["seed"], int)
        assert list(trial.intermediate_values) == [1, 2]
    assert len({trial.user_attrs["seed"] for trial in study.trials}) == 3


def test_diverging_trials_fail_with_a_reason_and_the_study_goes_on(
    storage_url: str, study_name: str
) -> None:
    spec = landscape_spec(
        study_name,
        search={"optimizers": ["sgd"]},
        optimizers={"sgd": {"learning_rate": [0.5, 1.0]}},
        budget={"trials": 4, "epochs": 2},
    )
    studies.create_or_resume(spec, open_storage(storage_url))
    run_worker(spec, storage_url)
    trials = optuna.load_study(study_name=study_name, storage=open_storage(storage_url)).trials
    # Recorded so that samplers learn from them: COMPLETE, worse than any result (the study
    # minimises) and infeasible; with the epoch and the loss for users.
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 4
    assert [trial.value for trial in trials] == [math.inf] * 4
    assert all("diverged in epoch 1" in trial.user_attrs["diverged"] for trial in trials)
    assert all(trial.constraints == {"diverged": 1.0} for trial in trials)
    assert all("fail_reason" not in trial.user_attrs for trial in trials)
    with pytest.raises(EmptyStudyError, match="no completed trial"):
        best_config(study_name, storage=storage_url)


def test_tpe_learns_to_avoid_the_learning_rates_that_diverge(
    storage_url: str, study_name: str
) -> None:
    """SGD on Rosenbrock diverges above lr ~2e-3: about half of [1e-5, 1] log-uniform. Once
    its random start-up trials are done, TPE must propose far fewer diverging ones; were
    divergence a FAIL, TPE would not see it at all."""
    spec = landscape_spec(
        study_name,
        search={"optimizers": ["sgd"], "weight_decay": "off"},
        optimizers={"sgd": {"learning_rate": [1e-5, 1.0]}},
        budget={"trials": 30, "epochs": 1},
        sampler={"name": "tpe", "n_startup_trials": 10},
        pruner={"name": "none"},
    )
    studies.create_or_resume(spec, open_storage(storage_url))
    run_worker(spec, storage_url)
    trials = optuna.load_study(study_name=study_name, storage=open_storage(storage_url)).trials
    lost = [bool(trial.user_attrs.get("diverged")) for trial in trials]
    startup, learned = sum(lost[:10]) / 10, sum(lost[10:]) / 20
    assert startup >= 0.3  # the range really is half divergent
    assert learned <= startup / 2, (startup, learned)


def test_a_crashing_workload_fails_its_trial_not_the_worker(
    storage_url: str, study_name: str
) -> None:
    spec = build_spec(
        name=study_name,
        workload={"name": "tests.workloads.factories:broken"},
        metric="loss",
        direction="minimize",
        budget={"trials": 2, "epochs": 1},
    )
    studies.create_or_resume(spec, open_storage(storage_url))
    assert run_worker(spec, storage_url).trials == 2
    trials = optuna.load_study(study_name=study_name, storage=open_storage(storage_url)).trials
    assert [trial.state for trial in trials] == [TrialState.FAIL] * 2
    assert "RuntimeError: broken on purpose" in trials[0].user_attrs["fail_reason"]


def test_resume_tops_the_budget_up_and_refuses_a_changed_search_space(
    storage_url: str, study_name: str
) -> None:
    storage = open_storage(storage_url)
    spec = landscape_spec(study_name, budget={"trials": 5, "epochs": 1})
    studies.create_or_resume(spec, storage)
    run_worker(spec, storage_url)
    bigger = landscape_spec(study_name, budget={"trials": 8, "epochs": 1})
    studies.create_or_resume(bigger, storage)
    run_worker(bigger, storage_url)
    trials = optuna.load_study(study_name=study_name, storage=open_storage(storage_url)).trials
    assert len(trials) == 8 and all(trial.state.is_finished() for trial in trials)

    changed = landscape_spec(study_name, search={"optimizers": ["adam"]})
    with pytest.raises(SpecError, match="different search"):
        studies.create_or_resume(changed, storage)
    resumed = optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
    assert len(resumed.trials) == 8


def test_wall_time_budget_stops_claiming_trials(sqlite_url: str) -> None:
    spec = landscape_spec("timed", budget={"trials": None, "timeout_seconds": 1.0, "epochs": 1})
    studies.create_or_resume(spec, open_storage(sqlite_url))
    summary = run_worker(spec, sqlite_url, timeout=1.0)
    trials = optuna.load_study(study_name="timed", storage=sqlite_url).trials
    assert summary.trials == len(trials) > 0
    assert all(trial.state.is_finished() for trial in trials)


def _learning_rates(storage_url: str, name: str) -> list[float]:
    trials = optuna.load_study(study_name=name, storage=open_storage(storage_url)).trials
    return [trial.user_attrs["config"]["learning_rate"] for trial in trials]


def test_workers_and_resumed_runs_draw_their_own_trials(tmp_path: Any) -> None:
    """Seeded alike, every worker of a run, and a resumed run's, would draw the same random
    start-up trials; a new study's first worker keeps the spec's seed (reproducible)."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    first_run = {}
    for name, stream in (("a", 0), ("b", 0), ("c", 1)):
        spec = landscape_spec(name, budget={"trials": 3, "epochs": 1}, sampler={"name": "random"})
        studies.create_or_resume(spec, open_storage(url))
        run_worker(spec, url, stream=stream)
        first_run[name] = _learning_rates(url, name)
    assert first_run["a"] == first_run["b"], "the same seed, the same first worker"
    assert not set(first_run["c"]) & set(first_run["a"]), "another worker, other trials"

    resumed = landscape_spec("a", budget={"trials": 6, "epochs": 1}, sampler={"name": "random"})
    studies.create_or_resume(resumed, open_storage(url))
    run_worker(resumed, url)
    rates = _learning_rates(url, "a")
    assert len(set(rates)) == 6, "a resumed run does not replay the first run's draws"


def test_a_password_in_the_storage_url_is_not_recorded_with_the_study(tmp_path: Any) -> None:
    """The recorded spec is for all to read: optuna-dashboard serves it."""
    spec = landscape_spec(
        "secret", execution={"storage": "postgresql+psycopg://bob:s3cret@db.example/studies"}
    )
    storage = open_storage(f"sqlite:///{tmp_path / 'studies.db'}")
    study = studies.create_or_resume(spec, storage)
    recorded = study.user_attrs["spec"]["execution"]["storage"]
    assert "s3cret" not in recorded and "bob@db.example" in recorded.replace(":***", "")


class _KeptRecorder:
    """A recorder that keeps what it is handed (the worker's one way to record a trial)."""

    def __init__(self) -> None:
        self.records: list[tuple[int, TrialState, int]] = []
        self.titles: dict[int, str] = {}
        self.seconds: dict[int, float] = {}

    def record(
        self, trial: optuna.Trial, state: TrialState, curve: list, seconds: float, title: str
    ) -> dict[str, Any]:
        self.records.append((trial.number, state, len(curve)))
        self.titles[trial.number] = title
        self.seconds[trial.number] = seconds
        return {}  # nothing to name on the trial

    def finish(self) -> None:
        self.records.append((-1, TrialState.COMPLETE, 0))  # the worker's last call


def test_the_worker_records_each_finished_trial_through_the_recorder_it_is_handed(
    sqlite_url: str, tmp_path
) -> None:
    spec = landscape_spec("recorded", budget={"trials": 3, "epochs": 2})
    studies.create_or_resume(spec, open_storage(sqlite_url))
    recorder = _KeptRecorder()
    run_worker(spec, sqlite_url, recorder=recorder)
    trials = optuna.load_study(study_name="recorded", storage=sqlite_url).trials
    assert recorder.records.pop() == (-1, TrialState.COMPLETE, 0)
    assert sorted(recorder.records) == [
        (trial.number, trial.state, len(trial.user_attrs["curve"])) for trial in trials
    ]
    # Each was weighed by its training: within its wall time, which also holds its sampling,
    # its database calls and its waits.
    for trial in trials:
        assert 0 < recorder.seconds[trial.number] < trial.user_attrs["wall_seconds"]
    # The recorder it was handed replaced the default: no learning curve was uploaded (and
    # the finished trials' checkpoints are gone).
    assert not any(key.startswith("artifacts:") for t in trials for key in t.system_attrs)
    assert not [path for path in (tmp_path / "artifacts").rglob("*") if path.is_file()]


@pytest.mark.parametrize(
    ("optimizers", "stored_as"),
    [({}, "learning_rate_in_range"), ({"sgd": {"learning_rate": [1e-4, 1e-2]}}, "learning_rate")],
    ids=["per-optimizer-ranges", "one-shared-range"],
)
def test_a_learning_curve_is_titled_with_the_rate_the_trial_trained_with(
    sqlite_url: str, optimizers: dict[str, Any], stored_as: str
) -> None:
    """Per-optimizer ranges store the learning rate as a position in its range: the title
    shows the rate itself either way (it read "lr nan" from the parameter's name)."""
    spec = landscape_spec("titled", optimizers=optimizers, budget={"trials": 4, "epochs": 1})
    studies.create_or_resume(spec, open_storage(sqlite_url))
    recorder = _KeptRecorder()
    run_worker(spec, sqlite_url, recorder=recorder)
    trials = optuna.load_study(study_name="titled", storage=sqlite_url).trials
    assert all(stored_as in trial.params for trial in trials)
    for trial in trials:
        config = trial_config(trial)
        assert config is not None
        assert recorder.titles[trial.number] == (
            f"trial {trial.number}: {config.optimizer}, lr {config.learning_rate:.3g}"
        )


def _commits_per_trial(
    prepare: Callable[[int], None], run: Callable[[int], None], runs: tuple[int, int] = (4, 12)
) -> float:
    """Commits per trial of `run(trials)`, run to 4 trials, then on to 12 (`prepare(trials)`
    before each, not counted): the second run's 8 trials less the first's 4, so that the
    once-per-run commits (loading the study, the first sweep) fall out. Counted on the
    caller's thread only: the heartbeat thread beats by the clock, not by the trial."""
    counts: list[int] = []

    def count(connection: sqlalchemy.Connection) -> None:
        if threading.current_thread() is threading.main_thread():
            counts[-1] += 1

    for trials in runs:
        prepare(trials)
        counts.append(0)
        sqlalchemy.event.listen(sqlalchemy.Engine, "commit", count)
        try:
            run(trials)
        finally:
            sqlalchemy.event.remove(sqlalchemy.Engine, "commit", count)
    first, second = runs[0], runs[1] - runs[0]
    return (counts[1] - counts[0]) / (second - first)


def test_a_trial_costs_no_more_commits_than_under_plain_optunas_optimize(
    storage_url: str, study_name: str
) -> None:
    """The same space, sampler and storage through tuner's worker and through Optuna's
    study.optimize: the claim, the parameters, the attributes (configuration, constraint and
    learning-curve artifact in one transaction) and the result cost no more commits."""
    plain_name = f"{study_name}-optuna"
    ours_storage, plain_storage = open_storage(storage_url), RDBStorage(storage_url)

    def spec_for(trials: int) -> StudySpec:
        return landscape_spec(
            study_name,
            budget={"trials": trials, "epochs": 1},
            pruner={"name": "none"},
            # No sweep falls inside the run: the first, at its start, is once per run.
            execution={"heartbeat_seconds": 600, "grace_seconds": 1200},
        )

    def create(trials: int) -> None:
        studies.create_or_resume(spec_for(trials), ours_storage)
        optuna.create_study(study_name=plain_name, storage=plain_storage, load_if_exists=True)

    def tuner(trials: int) -> None:
        run_worker(spec_for(trials), storage_url)

    def plain_optuna(trials: int) -> None:
        spec = spec_for(trials)
        study = optuna.load_study(
            study_name=plain_name, storage=plain_storage, sampler=make_sampler(spec, spec.seed)
        )
        objective = lambda trial: (sample_config(trial, spec), 1.0)[1]  # noqa: E731
        study.optimize(objective, n_trials=trials - len(study.trials))

    try:
        ours = _commits_per_trial(create, tuner)
        theirs = _commits_per_trial(create, plain_optuna)
    finally:
        if plain_name in optuna.get_all_study_names(plain_storage):
            optuna.delete_study(study_name=plain_name, storage=plain_storage)
        for storage in (ours_storage, plain_storage):
            storage.engine.dispose()
    trials = optuna.load_study(study_name=study_name, storage=storage_url).trials
    assert len(trials) == 12 and all(trial.state == TrialState.COMPLETE for trial in trials)
    # Each trial recorded its attributes, its constraint and its curve's artifact.
    assert all(trial.user_attrs["config"] and trial.constraints for trial in trials)
    assert all(any(k.startswith("artifacts:") for k in trial.system_attrs) for trial in trials)
    assert 0 < ours <= theirs
