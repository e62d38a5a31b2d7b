"""tuner: hyperparameter search for deep-learning optimizers.

Public surface: `best_config` / `BestConfig` to use a study's winner from other projects,
`load_spec` and `run` to run studies from Python, and the error types.
"""

from tuner.api import BestConfig, best_config
from tuner.config import TrainingConfig
from tuner.errors import (
    EmptyStudyError,
    SpecError,
    StorageError,
    StudyNotFoundError,
    TunerError,
)
from tuner.runner import run
from tuner.spec import StudySpec, load_spec

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
    "load_spec",
    "run",
]
