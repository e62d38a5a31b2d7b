"""`TrainingConfig`: everything one trial trains with, and the code that builds it.

It is what the search space samples, what each trial records (user attribute ``config``), and
what `best_config()` hands back to other projects, so a winning configuration is rebuilt by
the same code that trained it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

    from tuner.search.schedules import Scheduler
    from tuner.search.stepper import Stepper


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """An optimizer with its hyperparameters, LR schedule, clipping and batch size.

    Attributes:
        optimizer: registry name (``adamw``) or the name given in the study file.
        target: the library class, ``module:Class``.
        learning_rate: peak learning rate.
        momentum: SGD/RMSprop momentum where the optimizer has one, else None.
        weight_decay: 0.0 when off.
        hyperparameters: the optimizer's other knobs in natural units (beta1, beta2, eps, ...).
        schedule: one of tuner.search.schedules.SCHEDULES.
        warmup_fraction: share of steps spent warming up (warmup_cosine).
        max_grad_norm: gradient-norm clipping threshold, or None for no clipping.
        batch_size: mini-batch size, or None where the workload has no data.
        lookahead: (k, alpha) of a Lookahead wrapper, or None.
        schedule_free: the optimizer needs ``train()``/``eval()`` calls (Schedule-Free AdamW).
        params: the user's own parameters (``[params]`` and ``trial.suggest_*``, see
            tuner.search.params) in natural units, by the names the user chose.
    """

    optimizer: str
    target: str
    learning_rate: float
    momentum: float | None = None
    weight_decay: float = 0.0
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    schedule: str = "constant"
    warmup_fraction: float = 0.0
    max_grad_norm: float | None = None
    batch_size: int | None = None
    lookahead: tuple[int, float] | None = None
    schedule_free: bool = False
    params: Mapping[str, Any] = field(default_factory=dict)

    def build_optimizer(
        self, params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]]
    ) -> torch.optim.Optimizer:
        """A ready torch optimizer over `params` with this configuration."""
        from tuner.search.optimizers import build_optimizer

        return build_optimizer(
            self.target, params, self.learning_rate, self.weight_decay, self.knobs, self.lookahead
        )

    @property
    def knobs(self) -> dict[str, Any]:
        """Every optimizer knob in natural units under one name each, momentum included: the
        form `tuner.search.optimizers.optimizer_kwargs` maps to a library's arguments. (``momentum``
        is a field of its own because results and `best_config()` show it apart.)"""
        if self.momentum is None:
            return dict(self.hyperparameters)
        return {**self.hyperparameters, "momentum": self.momentum}

    def build_scheduler(
        self,
        optimizer: torch.optim.Optimizer,
        steps_per_epoch: int,
        epochs: int,
        direction: Literal["minimize", "maximize"] = "minimize",
    ) -> Scheduler:
        """The LR schedule; call ``step()`` after every optimizer step, except for ``plateau``
        (ReduceLROnPlateau), which takes ``step(metric)`` once per epoch."""
        from tuner.search.schedules import build_scheduler

        return build_scheduler(
            optimizer, self.schedule, steps_per_epoch, epochs, self.warmup_fraction, direction
        )

    def build_stepper(
        self,
        params: Iterable[torch.nn.Parameter],
        steps_per_epoch: int,
        epochs: int,
        direction: Literal["minimize", "maximize"] | None = None,
    ) -> Stepper:
        """The optimizer and schedule behind one object that a plain loop calls after
        ``backward()`` and at each epoch's end, whatever the configuration (clipping,
        ``plateau``, Schedule-Free, Lookahead): see tuner.search.stepper."""
        from tuner.search.stepper import Stepper

        return Stepper(self, params, steps_per_epoch, epochs, direction)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (what a trial records)."""
        # `params` may be read-only (`BestConfig`), which asdict cannot copy.
        return {**asdict(replace(self, params={})), "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        """Rebuild from `to_dict` output; unknown keys are ignored so old records still load."""
        names = {f.name for f in fields(TrainingConfig)}
        values = {key: value for key, value in data.items() if key in names}
        if values.get("lookahead") is not None:
            values["lookahead"] = tuple(values["lookahead"])
        return cls(**values)
