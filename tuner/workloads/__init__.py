"""The workload registry, and user workloads named by import path ``package.module:factory``.

A user factory is called as ``factory(options: dict, context: TrialContext)`` and returns a
`Trainable`; its study file must name the metric and direction, which only it knows.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from tuner.optimizers import import_target
from tuner.workloads import landscapes, regression, vision
from tuner.workloads.base import Direction, Options, Trainable, TrialContext, Workload

REGISTRY: dict[str, Workload] = {
    workload.name: workload
    for module in (landscapes, regression, vision)
    for workload in module.WORKLOADS
}

__all__ = ["REGISTRY", "Trainable", "TrialContext", "Workload", "build_trainable", "resolve_metric"]


def _registered(name: str) -> Workload | None:
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
        try:
            import_target(spec.name)
        except ValueError as error:
            raise ValueError(f"[workload] name: {error}") from None
        if metric is None or direction is None:
            raise ValueError("a workload of your own needs metric and direction at the top level")
        return metric, direction
    _options(workload, spec.options)
    metric = metric or workload.default_metric
    if metric not in workload.metrics:
        raise ValueError(
            f"metric: {workload.name} reports {', '.join(workload.metrics)}, not {metric!r}"
        )
    return metric, direction or workload.metrics[metric]


def build_trainable(spec: Any, context: TrialContext) -> Trainable:
    """Build one trial's model and data from a validated `WorkloadSpec`."""
    workload = _registered(spec.name)
    if workload is None:
        return import_target(spec.name)(dict(spec.options), context)
    return workload.build(_options(workload, spec.options), context)


def uses_batches(spec: Any) -> bool:
    """Whether batch size means anything to this workload (landscapes have no data)."""
    workload = _registered(spec.name)
    return workload is None or workload.uses_batches


def preflight(spec: Any) -> None:
    """Run the workload's start-of-study checks (its data is there), if it has any."""
    workload = _registered(spec.name)
    if workload is not None and workload.preflight is not None:
        workload.preflight(_options(workload, spec.options))
