"""Validation checks names against the registries' keys, and the study note renders every fact
from its entry: schedules, data sets, samplers, pruners, Lookahead."""

from __future__ import annotations

import pytest

from tests.specs import build_spec
from tuner.errors import SpecError
from tuner.search.pruners import PRUNERS
from tuner.search.samplers import SAMPLERS
from tuner.search.schedules import SCHEDULES
from tuner.search.space import LOOKAHEAD_ALPHA, LOOKAHEAD_K
from tuner.spec import PrunerSpec, SamplerSpec, StudySpec
from tuner.study.importance import MIN_TRIALS
from tuner.study.note import study_note
from tuner.workloads.datasets import DATASETS


def cnn_spec(dataset: str, **search: object) -> StudySpec:
    return build_spec(
        name="noted",
        workload={"name": "cnn", "options": {"dataset": dataset}},
        search={"optimizers": ["adam", "momentum"], **search},
        budget={"trials": 4, "epochs": 1},
    )


def test_every_schedule_is_described_from_its_entry() -> None:
    note = study_note(cnn_spec("digits", schedules=list(SCHEDULES)))
    for name, schedule in SCHEDULES.items():
        assert schedule.description and "\n" not in schedule.description
        assert f"{name} ({schedule.description})" in note


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_dataset_is_described_from_its_entry(name: str) -> None:
    assert f"Dataset: `{name}`, {DATASETS[name].description}." in study_note(cnn_spec(name))


def test_lookahead_ranges_and_the_importance_minimum_come_from_their_homes() -> None:
    note = study_note(cnn_spec("digits", lookahead="search"))
    low, high = int(LOOKAHEAD_K.low), int(LOOKAHEAD_K.high)
    assert f"`lookahead_k` {low} – {high} (uniform, integer)" in note
    assert f"`lookahead_alpha` {LOOKAHEAD_ALPHA.low:g} – {LOOKAHEAD_ALPHA.high:g}" in note
    assert f"shown once the study has {MIN_TRIALS} complete trials" in note
    # Which trials the chart reads, under tuner's dashboard and under the plain one.
    assert "plain `optuna-dashboard` also counts confirmation runs (`confirms`)" in note
    # momentum is searched on its transformed scale, which the note names once per knob.
    assert "(searched as `one_minus_momentum`, log-uniform)" in note


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_is_described_from_its_entry(name: str) -> None:
    spec = cnn_spec("digits").model_copy(update={"sampler": SamplerSpec(name=name)})
    note = study_note(spec)
    assert f"- Sampler: {SAMPLERS[name].description}" in note
    startup = f"after {SAMPLERS[name].startup} random startup trials" in note
    assert startup is (SAMPLERS[name].startup is not None)


@pytest.mark.parametrize("name", list(PRUNERS))
def test_every_pruner_is_described_from_its_entry(name: str) -> None:
    spec = cnn_spec("digits").model_copy(update={"pruner": PrunerSpec(name=name)})
    assert f"- Pruner: {PRUNERS[name].describe(spec)}" in study_note(spec)


@pytest.mark.parametrize(
    ("section", "name", "known"),
    [("sampler", "tpx", SAMPLERS), ("pruner", "hyperbnd", PRUNERS)],
)
def test_an_unknown_name_is_refused_naming_the_registry_keys(
    section: str, name: str, known: dict
) -> None:
    with pytest.raises(SpecError, match=f"unknown {section} '{name}'; known: ") as refused:
        build_spec(**{section: {"name": name}})
    assert ", ".join(known) in str(refused.value)
