"""Creating and resuming a study from a spec: its sampler, pruner and seeds, what it records,
what a resume must keep, and the budget that claimed trials spend."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from tuner.errors import SpecError
from tuner.search.pruners import PRUNERS, make_pruner
from tuner.search.samplers import make_sampler
from tuner.spec import StudySpec
from tuner.storage.rdb import UNCOUNTED_KEYS, open_storage
from tuner.study import lifecycle as studies
from tuner.study.results import outside_budget

MakeSpec = Callable[..., StudySpec]


def test_the_first_worker_of_a_new_study_keeps_the_specs_seed() -> None:
    assert studies.sampler_seed(7, stream=0, trials_before=0) == 7
    others = {
        studies.sampler_seed(7, stream, before) for stream in range(3) for before in (0, 5)
    } - {7}
    assert len(others) == 5  # every other worker, and every resume, draws its own stream
    assert studies.sampler_seed(7, 1, 0) == studies.sampler_seed(7, 1, 0)  # reproducible


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
        ("grid", optuna.samplers.RandomSampler),
        ("cmaes", optuna.samplers.CmaEsSampler),
        ("qmc", optuna.samplers.QMCSampler),
        ("gp", optuna.samplers.GPSampler),
    ],
)
def test_each_sampler_name_builds_its_optuna_sampler(
    name: str, kind: type, make_spec: MakeSpec
) -> None:
    assert type(make_sampler(make_spec(sampler={"name": name}))) is kind


def test_the_same_seed_samples_the_same_parameters(make_spec: MakeSpec) -> None:
    spec = make_spec(sampler={"name": "random"}, seed=11)

    def draws(seed: int | None) -> list[float]:
        study = optuna.create_study(sampler=make_sampler(spec, seed))
        return [study.ask().suggest_float("x", 0, 1) for _ in range(3)]

    assert draws(None) == draws(11) != draws(12)


@pytest.mark.parametrize(("pruner", "learns"), [("successive_halving", True), ("none", False)])
def test_cmaes_learns_from_pruned_trials_under_a_multi_fidelity_pruner(
    pruner: str, learns: bool, make_spec: MakeSpec
) -> None:
    """Under successive halving most trials end PRUNED: CMA-ES must read them (by their last
    value) or it never leaves its random start-up."""
    spec = make_spec(sampler={"name": "cmaes", "n_startup_trials": 2}, pruner={"name": pruner})
    study = optuna.create_study(sampler=make_sampler(spec))
    for number in range(12):
        trial = study.ask()
        x, y = trial.suggest_float("x", -1, 1), trial.suggest_float("y", -1, 1)
        trial.report(x**2 + y**2, 1)
        # The first trial trains in full (CMA-ES infers the space from complete trials).
        if number == 0:
            study.tell(trial, x**2 + y**2)
        else:
            study.tell(trial, state=TrialState.PRUNED)
    generations = [
        key for t in study.trials for key in t.system_attrs if key.startswith("cma:generation")
    ]
    assert bool(generations) is learns


@pytest.mark.parametrize(
    ("sampler", "startup"),
    [({"name": "tpe"}, 20), ({"name": "gp"}, 10), ({"name": "tpe", "n_startup_trials": 3}, 3)],
)
def test_start_up_trials_are_the_samplers_own_unless_the_study_sets_them(
    sampler: dict, startup: int, make_spec: MakeSpec
) -> None:
    built = make_sampler(make_spec(sampler=sampler))
    assert built._n_startup_trials == startup  # type: ignore[attr-defined]


def test_qmc_draws_one_sequence_per_study_seed_whatever_the_worker(make_spec: MakeSpec) -> None:
    """The study's seed scrambles the Sobol points (else every study draws the same ones); a
    worker's own sampler seed does not, so all workers draw from the study's one sequence."""

    def points(study_seed: int, worker_seed: int) -> list[tuple[float, float]]:
        spec = make_spec(sampler={"name": "qmc"}, seed=study_seed)
        study = optuna.create_study(sampler=make_sampler(spec, worker_seed))
        drawn = []
        for _ in range(4):
            trial = study.ask()
            drawn.append((trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)))
            study.tell(trial, 0.0)
        return drawn[1:]  # the first trial is independent: it fixes the space

    assert points(1, 1) == points(1, 99) != points(2, 2)


@pytest.mark.parametrize(
    ("pruner", "kind"),
    [
        ({"name": "hyperband"}, optuna.pruners.HyperbandPruner),
        ({"name": "median"}, optuna.pruners.MedianPruner),
        ({"name": "successive_halving"}, optuna.pruners.SuccessiveHalvingPruner),
        ({"name": "wilcoxon"}, optuna.pruners.WilcoxonPruner),
        ({"name": "none"}, optuna.pruners.NopPruner),
    ],
)
def test_each_pruner_name_builds_its_optuna_pruner(
    pruner: dict, kind: type, make_spec: MakeSpec
) -> None:
    assert type(make_pruner(make_spec(pruner=pruner))) is kind


@pytest.mark.parametrize(
    ("pruner", "factor"),
    [
        ({}, 2),
        ({"name": "hyperband"}, 3),
        ({"reduction_factor": 4}, 4),
        ({"name": "hyperband", "reduction_factor": 2}, 2),
    ],
)
def test_the_reduction_factor_is_the_pruners_own_unless_the_study_sets_one(
    pruner: dict, factor: int, make_spec: MakeSpec
) -> None:
    spec = make_spec(pruner=pruner)
    assert PRUNERS[spec.pruner.name].describe(spec).count(f"reduction factor {factor}") == 1
    built = make_pruner(spec)
    # Optuna keeps it as `_reduction_factor` on both pruners.
    assert built._reduction_factor == factor  # type: ignore[attr-defined]


def test_a_new_study_records_its_spec_metric_and_note(sqlite_url: str, make_spec: MakeSpec) -> None:
    spec = make_spec(name="recorded", direction="minimize", metric="loss")
    study = studies.create_or_resume(spec, open_storage(sqlite_url))
    loaded = optuna.load_study(study_name="recorded", storage=sqlite_url)
    assert loaded.user_attrs["spec"] == spec.to_dict()
    assert loaded.user_attrs["metric"] == "loss" and loaded.metric_names == ["loss"]
    assert loaded.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.study_name == "recorded"


def test_the_recorded_storage_url_hides_its_password(sqlite_url: str, make_spec: MakeSpec) -> None:
    secret = "postgresql+psycopg://me:hunter2@db.example/tuner"
    spec = make_spec(execution={"storage": secret})
    study = studies.create_or_resume(spec, open_storage(sqlite_url))
    assert study.user_attrs["spec"]["execution"]["storage"] == (
        "postgresql+psycopg://me:***@db.example/tuner"
    )


def test_a_resume_may_change_the_budget_but_not_the_search_space(
    sqlite_url: str, make_spec: MakeSpec
) -> None:
    storage = open_storage(sqlite_url)
    studies.create_or_resume(make_spec(name="kept"), storage)
    resumed = studies.create_or_resume(make_spec(name="kept", budget={"trials": 9}), storage)
    assert resumed.user_attrs["spec"]["budget"]["trials"] == 9
    with pytest.raises(SpecError, match=r"'kept' already exists with a different search; "):
        studies.create_or_resume(make_spec(name="kept", search={"optimizers": ["sgd"]}), storage)
    with pytest.raises(SpecError, match=r"with a different workload, direction; "):
        studies.create_or_resume(
            make_spec(name="kept", workload={"name": "himmelblau"}, direction="maximize"), storage
        )
    assert optuna.get_all_study_names(storage) == ["kept"]


def test_a_resume_cannot_add_a_warm_start(sqlite_url: str, make_spec: MakeSpec) -> None:
    storage = open_storage(sqlite_url)
    studies.create_or_resume(make_spec(name="cold"), storage)
    with pytest.raises(SpecError, match=r"warm-started from no study; .*from earlier"):
        studies.create_or_resume(
            make_spec(name="cold", search={"warm_start": ["earlier"]}), storage
        )


def test_claimed_trials_spend_the_budget_exactly(sqlite_url: str, make_spec: MakeSpec) -> None:
    spec = make_spec(budget={"trials": 3})
    storage = open_storage(sqlite_url)
    studies.create_or_resume(spec, storage)
    study = studies.load(spec, storage)
    claimed = []
    while (trial := studies.claim_trial(study, spec)) is not None:
        claimed.append(trial.number)
        study.tell(trial, 1.0)
    assert claimed == [0, 1, 2]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3


def test_trials_outside_the_budget_are_retries_copies_and_confirmations() -> None:
    def made(**system_attrs) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(value=1.0, system_attrs=system_attrs)

    trials = [made(), made(), *(made(**{key: 1}) for key in UNCOUNTED_KEYS)]
    assert outside_budget(trials) == len(UNCOUNTED_KEYS)


@contextmanager
def _statements(storage: optuna.storages.RDBStorage) -> Iterator[list[str]]:
    """The SQL the storage's engine runs inside the block, as it is sent."""
    sent: list[str] = []

    def record(*args: object) -> None:
        sent.append(str(args[2]))

    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sqlalchemy.event.remove(storage.engine, "before_cursor_execute", record)


def test_creating_or_resuming_a_study_reads_no_other_study(
    storage_url: str, study_name: str, make_spec: MakeSpec
) -> None:
    """What a shared database holds besides the study costs its start nothing: no statement
    of a create or resume reads a trial, or lists the studies."""
    storage = open_storage(storage_url)
    neighbour = optuna.create_study(study_name=f"{study_name}-neighbour", storage=storage)
    try:
        neighbour.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
        for run in ("create", "resume"):
            with _statements(storage) as sent:
                studies.create_or_resume(make_spec(name=study_name), storage)
            reads = [s for s in sent if re.search(r"\bFROM (trials|trial_\w+|studies)\b", s)]
            assert reads, "the statements were not seen"
            assert not [s for s in reads if re.search(r"\bFROM trials\b", s)], run
            listings = [s for s in reads if "WHERE" not in s]
            assert not listings, f"{run} listed every study: {listings[0]}"
    finally:
        optuna.delete_study(study_name=f"{study_name}-neighbour", storage=storage)


def test_a_claimed_trial_is_not_read_again_to_build_its_optuna_trial(
    storage_url: str, study_name: str, make_spec: MakeSpec
) -> None:
    """The claim knows its trial from its own transaction; the optuna.Trial built for it
    (which reads its trial at once) is given that answer: a claim is one transaction."""
    storage = open_storage(storage_url)
    spec = make_spec(name=study_name, budget={"trials": 3})
    studies.create_or_resume(spec, storage)
    study = studies.load(spec, storage)
    transactions: list[object] = []
    count = transactions.append  # one object: event.remove finds a listener by identity
    sqlalchemy.event.listen(storage.engine, "commit", count)
    try:
        trial = studies.claim_trial(study, spec)
    finally:
        sqlalchemy.event.remove(storage.engine, "commit", count)
    assert trial is not None and trial.number == 0
    assert len(transactions) == 1
    assert trial.datetime_start is not None and trial.user_attrs == {}


def test_a_neighbouring_study_deleted_meanwhile_does_not_stop_a_resume(
    storage_url: str, study_name: str, make_spec: MakeSpec
) -> None:
    """Other users create and delete studies in a shared database while a run resumes its own:
    a resume that read every study failed on one deleted under it (KeyError)."""
    storage = open_storage(storage_url)
    studies.create_or_resume(make_spec(name=study_name), storage)
    churn = open_storage(storage_url, reconnect_seconds=5)
    stop = threading.Event()

    def create_and_delete() -> None:
        for index in range(200):
            if stop.is_set():
                return
            name = f"{study_name}-churn-{index}"
            optuna.create_study(study_name=name, storage=churn).set_user_attr("spec", {})
            optuna.delete_study(study_name=name, storage=churn)

    other = threading.Thread(target=create_and_delete)
    other.start()
    try:
        for _ in range(20):
            assert studies.create_or_resume(make_spec(name=study_name), storage).study_name
    finally:
        stop.set()
        other.join()
