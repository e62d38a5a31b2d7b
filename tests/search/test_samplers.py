"""Every sampler models the search space: real studies on Rosenbrock, whose optimum is known
(loss 0 at (1, 1)), trained by the real worker in a real SQLite file.

Two optimizers with different learning-rate ranges make the space conditional (the knobs are
sampled as positions in each optimizer's range); the momentum knob both share. After the
start-up trials, a modelling sampler must propose other configurations than random search
with the same seed, and better ones: trials whose final loss is nearer the optimum.
"""

from __future__ import annotations

import statistics

import optuna
import pytest

from tuner.execution.worker import run_worker
from tuner.search.samplers import make_sampler
from tuner.search.space import sample_config
from tuner.spec import StudySpec, parse_spec
from tuner.storage.rdb import open_storage
from tuner.study import lifecycle as studies

#: Trials per study: CMA-ES moves slowest (a population of 6 for two dimensions, and the
#: optimizer drawn at random beside them), so it gets the longest budget.
TRIALS = {"tpe": 30, "gp": 30, "cmaes": 60, "qmc": 17, "random": 60}
STARTUP = 8


def spec_for(sampler: str, name: str) -> StudySpec:
    return parse_spec(
        {
            "name": name,
            "seed": 3,
            "workload": {"name": "rosenbrock", "options": {"steps_per_epoch": 40}},
            "search": {"optimizers": ["momentum", "nesterov"], "weight_decay": "off"},
            "optimizers": {
                "momentum": {"learning_rate": [1e-5, 1e-2]},
                "nesterov": {"learning_rate": [1e-6, 1e-2]},
            },
            "budget": {"trials": TRIALS[sampler], "epochs": 1},
            "sampler": {"name": sampler, "n_startup_trials": STARTUP},
            "pruner": {"name": "none"},
        }
    )


def run_study(sampler: str, url: str) -> list[optuna.trial.FrozenTrial]:
    spec = spec_for(sampler, f"samplers-{sampler}")
    studies.create_or_resume(spec, open_storage(url))
    run_worker(spec, url)
    return optuna.load_study(study_name=spec.name, storage=open_storage(url)).trials


def final_loss(trial: optuna.trial.FrozenTrial) -> float:
    """The trial's loss at the end, a diverged trial counting as the start's (4)."""
    return 4.0 if trial.user_attrs.get("diverged") else trial.value


@pytest.fixture(scope="module")
def random_trials(tmp_path_factory: pytest.TempPathFactory) -> list[optuna.trial.FrozenTrial]:
    return run_study("random", f"sqlite:///{tmp_path_factory.mktemp('random')}/s.db")


@pytest.mark.parametrize("sampler", ["tpe", "cmaes", "gp"])
def test_a_sampler_proposes_its_own_trials_and_moves_toward_the_optimum(
    sampler: str, random_trials: list[optuna.trial.FrozenTrial], sqlite_url: str
) -> None:
    trials = run_study(sampler, sqlite_url)
    later = trials[STARTUP:]
    # The space every trial shares is modelled: the position of the learning rate in its
    # optimizer's range and the momentum, jointly (CMA-ES records its generation).
    assert all({"learning_rate_in_range", "one_minus_momentum"} <= set(t.params) for t in later)
    same = sum(t.params == r.params for t, r in zip(later, random_trials[STARTUP:], strict=False))
    assert same == 0
    if sampler == "cmaes":
        assert sum("cma:generation" in t.system_attrs for t in later) >= len(later) - 2
    if sampler == "cmaes":
        # CMA-ES moves slowly at this budget (a generation is 6 trials): its last third ends
        # nearer (1, 1) than its first third.
        first, last = trials[:20], trials[-20:]
        assert statistics.median(map(final_loss, last)) < statistics.median(map(final_loss, first))
        return
    # Toward the optimum: the trials after the start-up end nearer (1, 1) than the start-up
    # trials did, and than random search's trials with the same numbers.
    ours = statistics.median(final_loss(t) for t in later)
    randoms = statistics.median(final_loss(t) for t in random_trials[STARTUP : len(trials)])
    start = statistics.median(final_loss(t) for t in trials[:STARTUP])
    assert ours < 0.75 * randoms, (ours, randoms)
    assert ours < 0.75 * start, (ours, start)


def test_qmc_samples_the_shared_space_from_its_sequence(
    random_trials: list[optuna.trial.FrozenTrial], sqlite_url: str
) -> None:
    """QMC does not adapt (by design, it covers the space evenly); what it must do is draw the
    knobs every trial shares from its sequence, jointly, instead of at random: the first trial
    fixes the space and every later one is the sequence's next point."""
    trials = run_study("qmc", sqlite_url)
    storage = open_storage(sqlite_url)
    attributes = storage.get_study_system_attrs(storage.get_study_id_from_name("samplers-qmc"))
    (drawn,) = [value for key, value in attributes.items() if key.startswith("qmc:")]
    assert drawn == len(trials) - 2  # the index of the last point drawn (from 0)
    assert {"learning_rate_in_range", "one_minus_momentum"} <= set(trials[1].distributions)
    same = sum(t.params == r.params for t, r in zip(trials[1:], random_trials[1:], strict=False))
    assert same == 0


def _user_params_spec(sampler: str, seed: int) -> StudySpec:
    return parse_spec(
        {
            "name": f"user-params-{sampler}",
            "seed": seed,
            "workload": {"name": "rosenbrock"},  # not trained: the objective is the user's
            "search": {"optimizers": ["sgd", "adam"], "weight_decay": "off"},
            "params": {"dropout": {"low": 0.0, "high": 1.0}, "layers": {"low": 1, "high": 6}},
            "budget": {"trials": 40, "epochs": 1},
            "sampler": {"name": sampler, "n_startup_trials": 10},
        }
    )


def _user_params_search(sampler: str, seed: int) -> optuna.Study:
    """A landscape of the user's parameters only, best at dropout 0.3 and 2 layers (the
    optimizer's knobs are sampled too, and do not matter), searched in memory."""
    spec = _user_params_spec(sampler, seed)
    study = optuna.create_study(sampler=make_sampler(spec))

    def objective(trial: optuna.Trial) -> float:
        params = sample_config(trial, spec).params
        return (params["dropout"] - 0.3) ** 2 + 0.01 * (params["layers"] - 2) ** 2

    study.optimize(objective, n_trials=spec.budget.trials)
    return study


def test_tpe_ends_nearer_a_user_parameters_best_value_than_random_search() -> None:
    """Over the same budget and the same seeds, TPE's best trials have a dropout nearer the
    known best (0.3) than random search's: it models the user's parameters."""
    seeds = range(5)
    distance = {
        sampler: statistics.mean(
            abs(_user_params_search(sampler, seed).best_params["dropout"] - 0.3) for seed in seeds
        )
        for sampler in ("tpe", "random")
    }
    assert distance["tpe"] < distance["random"], distance


@pytest.mark.parametrize("sampler", ["tpe", "cmaes", "gp", "qmc"])
def test_every_sampler_models_the_user_parameters_with_the_optimizers(sampler: str) -> None:
    """The relative (jointly modelled) search space holds the user's numerical parameters
    beside the optimizer's shared knobs."""
    spec = _user_params_spec(sampler, 0)
    study = optuna.create_study(sampler=make_sampler(spec))
    study.optimize(lambda t: sample_config(t, spec).params["dropout"], n_trials=3)
    space = study.sampler.infer_relative_search_space(study, study.ask())
    assert {"dropout", "layers"} <= set(space)
