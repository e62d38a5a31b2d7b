"""The workload registry, and user code: ``module:function`` or a command per trial.

A user factory is called as ``factory(options: dict, context: TrialContext)`` and returns a
`Trainable`; a training function ``train(trial)`` and a command own their training loop
(tuner.execution.trial, tuner.execution.script). Their study file must name the metric and
direction, which only they know.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from tuner.workloads import landscapes, regression, vision
from tuner.workloads.base import Direction, Options, Trainable, TrialContext, Workload
from tuner.workloads.user import import_user, kind

REGISTRY: dict[str, Workload] = {
    workload.name: workload
    for module in (landscapes, regression, vision)
    for workload in module.WORKLOADS
}

__all__ = [
    "REGISTRY",
    "Trainable",
    "TrialContext",
    "Workload",
    "build_trainable",
    "owns_loop",
    "resolve_metric",
    "training_function",
]


def _registered(name: str) -> Workload | None:
    if not name:  # a command
        return None
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" not in name:
        raise ValueError(
            f"[workload] name: unknown workload {name!r}; known: {', '.join(REGISTRY)}, "
            "or a factory of your own as 'package.module:factory'"
        )
    return None


def _options(workload: Workload, options: dict[str, Any]) -> Options:
    try:
        return workload.options.model_validate(options)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ValueError(f"[workload.options] {key}: {message}") from None


def resolve_metric(
    spec: Any, metric: str | None, direction: Direction | None
) -> tuple[str, Direction]:
    """Check a spec's workload and options, and settle its metric and direction."""
    workload = _registered(spec.name)
    if workload is None:
        if spec.name:
            _user_code(spec)
        if metric is None or direction is None:
            raise ValueError(
                "training code of your own needs metric (the name it reports) and direction "
                "(minimize or maximize) at the top of the study file"
            )
        return metric, direction
    _options(workload, spec.options)
    metric = metric or workload.default_metric
    if metric not in workload.metrics:
        raise ValueError(
            f"metric: {workload.name} reports {', '.join(workload.metrics)}, not {metric!r}"
        )
    return metric, direction or workload.metrics[metric]


def _user_code(spec: Any) -> tuple[Callable[..., Any], Literal["function", "factory"]]:
    """The user's function or factory named by ``[workload] name``, and which it is."""
    try:
        value = import_user(spec.name, spec.search_path)
        return value, kind(spec.name, value)
    except ValueError as error:
        raise ValueError(f"[workload] name: {error}") from None


def owns_loop(spec: Any) -> bool:
    """Whether the workload runs its own training loop (a command or a training function),
    so a worker hands it the trial instead of driving a `Trainable`."""
    return bool(spec.command) or (
        _registered(spec.name) is None and _user_code(spec)[1] == "function"
    )


def training_function(spec: Any) -> Callable[..., Any] | None:
    """The user's ``train(trial)`` named by the spec, or None for any other workload."""
    if spec.command or _registered(spec.name) is not None:
        return None
    value, what = _user_code(spec)
    return value if what == "function" else None


def build_trainable(spec: Any, context: TrialContext) -> Trainable:
    """Build one trial's model and data from a validated `WorkloadSpec`."""
    workload = _registered(spec.name)
    if workload is None:
        return _user_code(spec)[0](dict(spec.options), context)
    return workload.build(_options(workload, spec.options), context)


def uses_batches(spec: Any) -> bool:
    """Whether batch size means anything to this workload (landscapes have no data)."""
    workload = _registered(spec.name)
    return workload is None or workload.uses_batches


def preflight(spec: Any) -> None:
    """Run the workload's start-of-study checks (its data is there), if it has any.

    Raises:
        SpecError: a command's program or script is not there or not executable.
    """
    if spec.command:
        _check_command(spec.command, Path(spec.search_path[0]) if spec.search_path else Path())
        return
    workload = _registered(spec.name)
    if workload is not None and workload.preflight is not None:
        workload.preflight(_options(workload, spec.options))


def _check_command(command: list[str], folder: Path) -> None:
    """The program must be found and executable; when it is an interpreter (``python``,
    ``bash``) given a script, the script must be there too: every trial would fail otherwise."""
    from tuner.errors import SpecError

    program = command[0]
    if "/" in program:  # a path, relative to the folder the command runs in
        path = folder / program
        if not path.is_file() or not os.access(path, os.X_OK):
            why = "is not executable (chmod +x it)" if path.is_file() else "is not found"
            raise SpecError(f"[workload] command: {program!r} {why} in {folder}")
    elif program != "python" and shutil.which(program) is None:  # python: tuner's own
        raise SpecError(f"[workload] command: {program!r} is not found on PATH")
    script = command[1] if len(command) > 1 else ""
    interpreter = Path(program).name.startswith(("python", "bash", "sh"))
    given = interpreter and script and not script.startswith("-")
    if given and not os.access(folder / script, os.R_OK):
        raise SpecError(
            f"[workload] command: script {script!r} not found in {folder} (the study "
            "file's folder, where the command runs)"
        )
