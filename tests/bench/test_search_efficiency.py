"""bench/search_efficiency.py's targets: image counts, the accuracies they are compared as, and
the ratios read off best-so-far traces (the bench is a script, loaded from its file)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).parents[2] / "bench" / "search_efficiency.py"
_SPEC = importlib.util.spec_from_file_location("search_efficiency", _PATH)
assert _SPEC and _SPEC.loader
bench = importlib.util.module_from_spec(_SPEC)
sys.modules["search_efficiency"] = bench  # NamedTuple needs its module registered
_SPEC.loader.exec_module(bench)


def test_an_accuracy_takes_the_count_that_the_comparison_reaches() -> None:
    # 353/359 = 98.329%: below 98.33%, so "98.33%" took 354 right, and "98.61%" 355.
    assert bench.images_needed(0.9833, 359) == 354
    assert bench.images_needed(0.9861, 359) == 355
    assert bench.images_needed(0.9889, 359) == 356
    assert bench.images_needed(353 / 359, 359) == 353
    assert bench.images_needed(0.975, 1000) == 975
    with pytest.raises(ValueError):
        bench.images_needed(1.01, 359)


@pytest.mark.parametrize(
    ("text", "count"),
    [("354", 354), ("354/359", 354), ("0.9861", 355), ("98.61%", 355), ("1", 1), ("359", 359)],
)
def test_a_target_is_read_as_images_right(text: str, count: int) -> None:
    assert bench.parse_target(text, 359) == count


@pytest.mark.parametrize("text", ["354/360", "0", "360", "1.5", "0.0"])
def test_a_target_outside_the_validation_set_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        bench.parse_target(text, 359)


def test_the_label_gives_the_count_and_its_accuracy() -> None:
    assert bench.label(353, 359) == "353/359 (98.33%)"
    assert bench.label(354, 359) == "354/359 (98.61%)"


def test_neighbours_are_one_image_either_side_within_the_set() -> None:
    assert bench.neighbours(354, 359) == [353, 354, 355]
    assert bench.neighbours(359, 359) == [358, 359]
    assert bench.neighbours(1, 359) == [1, 2]


def _run(trace: list[tuple[int, float]], spent: int = 600, stop: int | None = None, **kw):
    fields = {
        "workload": "digits",
        "strategy": bench.BASELINE,
        "seed": 0,
        "validation_images": 359,
        "target_images": 354,
        "epochs_to_target": math.inf,
        "stop_images": stop,
        "epochs_spent": spent,
        "trials": 40,
        "diverged": 0,
        "seconds": 1.0,
        "trace": trace,
        "trials_detail": [],
        **kw,
    }
    return bench.Run(**fields)


def test_epochs_to_a_count_are_read_off_the_trace() -> None:
    # An accuracy averaged in float32 is k/n give or take rounding: it still counts as k.
    below = float(np.float32(354) / np.float32(359)) - 1e-9
    run = _run([(3, 350 / 359), (20, 353 / 359), (70, below), (300, 356 / 359)])
    assert bench.epochs_to(run, 353) == 20
    assert bench.epochs_to(run, 354) == 70
    assert bench.epochs_to(run, 355) == 300
    assert bench.epochs_to(run, 357) == math.inf


def test_a_study_that_stopped_cannot_tell_epochs_to_a_higher_count() -> None:
    stopped = _run([(3, 350 / 359), (40, 355 / 359)], spent=45, stop=355)
    assert bench.epochs_to(stopped, 355) == 40
    assert bench.epochs_to(stopped, 356) is None
    missed = _run([(3, 350 / 359)], spent=600, stop=355)  # never stopped: trained it all
    assert bench.epochs_to(missed, 356) == math.inf


def test_ratios_at_each_count_and_a_bound_where_the_baseline_misses_half() -> None:
    base = [
        _run([(100, 353 / 359), (300, 354 / 359)], spent=600),
        _run([(200, 353 / 359)], spent=590),
        _run([(50, 354 / 359)], spent=600),
    ]
    ours = [_run([(50, 354 / 359)], strategy="default", spent=200) for _ in range(3)]
    assert bench.ratio_text(base, ours, 353) == "2.00x"  # medians 100 and 50
    assert bench.ratio_text(base, ours, 354) == "6.00x"  # medians 300 and 50
    # Random missed 355 in all three: at least the epochs each spent, median 600.
    assert bench.ratio_text(base, ours, 355) == "—"  # ours never either
    ours_hit = [_run([(60, 355 / 359)], strategy="default") for _ in range(3)]
    assert bench.ratio_text(base, ours_hit, 355) == ">10.0x"
    table = bench.summarise([*base, *ours])
    assert "353/359 (98.33%) | 354/359 (98.61%), the target | 355/359 (98.89%)" in table
    assert "| default | 50 (3/3), 2.00x | 50 (3/3), 6.00x | never (0/3), — |" in table
    assert "| random-no-pruning | 100 (3/3) | 300 (2/3) | never (0/3) |" in table
