"""One way to build a study spec in tests: a small base study with the sections a test names.

Tests take it as the ``make_spec`` fixture (tests/conftest.py); module-level helpers and
fixtures that describe a recurring study (a second of Rosenbrock per trial, a stacked
regression) import `build_spec` and pass their sections to it, so no test file builds the
dict by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuner.spec import StudySpec, parse_spec

# The smallest study every test can start from: two optimizers on a few Rosenbrock steps.
BASE: dict[str, Any] = {
    "name": "test-spec",
    "workload": {"name": "rosenbrock", "options": {"steps_per_epoch": 5}},
    "search": {"optimizers": ["sgd", "adam"]},
    "budget": {"trials": 4, "epochs": 2},
}


def spec_data(*layers: Mapping[str, Any], **sections: Any) -> dict[str, Any]:
    """`BASE` with each layer, then `sections`, laid over it as parsed TOML.

    A table (dict) is merged key by key into the section it names, so ``budget={"trials": 9}``
    keeps the base's epochs; the workload table and any other value (a name, a list) replace
    the key whole, since a workload's options belong to the workload named with them.
    """
    data = {key: dict(value) if isinstance(value, dict) else value for key, value in BASE.items()}
    for layer in (*layers, sections):
        for key, value in layer.items():
            if key != "workload" and isinstance(value, Mapping) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = dict(value) if isinstance(value, Mapping) else value
    return data


def build_spec(*layers: Mapping[str, Any], **sections: Any) -> StudySpec:
    """A validated `StudySpec` from `spec_data` (same arguments)."""
    return parse_spec(spec_data(*layers, **sections))


def probe_spec(
    url: str, trials: int, options: Mapping[str, Any] | None = None, **execution: Any
) -> StudySpec:
    """A study of `tests.workloads.factories:process_probe`, whose metrics say how its
    worker process runs: one SGD step a trial, on the storage at `url`, with the
    ``[execution]`` keys given."""
    return build_spec(
        name="probe",
        metric="loss",
        direction="minimize",
        workload={"name": "tests.workloads.factories:process_probe", "options": options or {}},
        search={"optimizers": ["sgd"], "weight_decay": "off"},
        budget={"trials": trials, "epochs": 1},
        execution={"storage": url, **execution},
    )
