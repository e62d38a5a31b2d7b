"""tuner: hyperparameter search for deep-learning optimizers.

Public surface: `best_config` / `BestConfig` to use a study's winner from other projects,
`load_spec` and `run` to run studies from Python, `current_trial` for a script run per trial,
and the error types.

The names that need torch, Optuna or pydantic are loaded on first use (module `__getattr__`,
PEP 562), so `import tuner` and `tuner --help` stay quick: only the command that runs pays
for the libraries it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tuner.errors import (
    EmptyStudyError,
    SpecError,
    StorageError,
    StudyNotFoundError,
    TunerError,
)

if TYPE_CHECKING:
    from tuner.config import TrainingConfig
    from tuner.execution.script import current_trial
    from tuner.runner import run
    from tuner.spec import StudySpec, load_spec
    from tuner.study.best import BestConfig, best_config

# Public name → the module that defines it, imported when the name is first read.
_LAZY = {
    "BestConfig": "tuner.study.best",
    "best_config": "tuner.study.best",
    "TrainingConfig": "tuner.config",
    "run": "tuner.runner",
    "current_trial": "tuner.execution.script",
    "StudySpec": "tuner.spec",
    "load_spec": "tuner.spec",
}

__all__ = [
    "BestConfig",
    "EmptyStudyError",
    "SpecError",
    "StorageError",
    "StudyNotFoundError",
    "StudySpec",
    "TrainingConfig",
    "TunerError",
    "best_config",
    "current_trial",
    "load_spec",
    "run",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and cache the name on the package."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tuner' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
