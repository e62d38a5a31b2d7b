"""User workloads named by import path in tests (``tests.workloads:...``)."""

from __future__ import annotations

from typing import Any

from tuner.workloads.base import TrialContext


def broken(options: dict[str, Any], context: TrialContext) -> Any:
    """A factory that fails, as a user's buggy workload would."""
    raise RuntimeError("broken on purpose")
