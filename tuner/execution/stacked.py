"""K trials of one workload trained as one: stacked weights, one vmapped step for all of them.

Why: a small model leaves a GPU launch-bound (ANCHORS: about 2 ms a step whatever the
math). Stacking the weights of K trials along a leading dimension and running
``torch.func.vmap`` over ``torch.func.functional_call`` makes one sequence of kernel launches do
the work of K trials. Each trial keeps its own weights, optimizer state, learning-rate
schedule, data order and epoch counter, so trials join and leave the stack at any step and
follow the trajectory they would follow alone (tests/execution/test_stacked.py checks it).

A stack holds trials that agree on what must match to be stacked: the workload (one per
study), the optimizer's vectorized rule and its flags, and the batch size.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call, grad_and_value, vmap

from tuner.config import TrainingConfig
from tuner.execution.train import EpochResult, parameter_norm
from tuner.search.params import Param
from tuner.search.schedules import steps_per_epoch_scheduler
from tuner.search.vectorized_optimizers import (
    VectorizedOptimizer,
    VectorizedSettings,
    per_slot,
)
from tuner.spec import StudySpec
from tuner.workloads import TrialContext, build_trainable
from tuner.workloads.base import MiniBatchTask

Tensor = torch.Tensor
#: torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing by it.
_CLIP_EPSILON = 1e-6


def can_stack(trainable: object) -> bool:
    """Whether a workload's trials can share a stack: mini-batch training on per-sample
    losses, and no buffers (a BatchNorm's running statistics would need stacking too)."""
    return isinstance(trainable, MiniBatchTask) and not list(trainable.model.buffers())


def stack_key(config: TrainingConfig, settings: VectorizedSettings) -> Hashable:
    """What trials must share to be stacked together: the stack runs one model's forward
    pass (its template's), so also the values of the user's parameters, which the model may
    read beyond its shapes (a dropout rate)."""
    params = tuple(sorted(config.params.items()))
    return (settings.rule.target, settings.flags, config.batch_size, params)


@dataclass
class _Row:
    """One stacked trial's host-side counters."""

    key: Hashable  # the caller's handle for this trial
    order: torch.Generator  # its data order, seeded as when it trains alone
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None
    clips: bool  # whether it clips gradients (known here, so no step reads the device)
    steps: int = 0


def learning_rate_table(
    config: TrainingConfig, steps_per_epoch: int, epochs: int, direction: str
) -> tuple[list[float], torch.optim.lr_scheduler.ReduceLROnPlateau | None]:
    """The learning rate before every optimizer step of a run (and after its last), as the
    trial's torch scheduler sets it; or, for ``plateau``, the scheduler that changes it.

    The torch scheduler runs on a stand-in optimizer: schedulers only read and write the
    learning rate, so the rates are exactly those of the trial trained alone.
    """
    stand_in = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.learning_rate)
    scheduler = config.build_scheduler(stand_in, steps_per_epoch, epochs, direction)
    total = steps_per_epoch * epochs
    if not steps_per_epoch_scheduler(scheduler):
        return [config.learning_rate] * (total + 1), scheduler
    rates = []
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": on purpose
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(total + 1):
            rates.append(stand_in.param_groups[0]["lr"])
            scheduler.step()
    return rates, None


class StackedTrials:
    """Trials that share a workload, a vectorized optimizer rule and a batch size, trained
    together one step at a time."""

    def __init__(self, spec: StudySpec, settings: VectorizedSettings, batch_size: int, device):
        self.spec, self.batch_size, self.device = spec, batch_size, device
        self.rule, self.flags = settings.rule, dict(settings.flags)
        self._rows: list[_Row] = []
        self._template: MiniBatchTask | None = None
        self._params: dict[str, Tensor] = {}
        self._optimizer: VectorizedOptimizer | None = None
        # Per-trial tensors, one row each: data order, position in the epoch, steps taken,
        # learning-rate table, clipping threshold (inf: none), the epoch's summed loss and
        # the loss at the trial's first step (for the divergence rule).
        self._tensors: dict[str, Tensor] = {}
        self._step_grads = vmap(grad_and_value(self._trial_loss))

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def keys(self) -> list[Hashable]:
        """The handles of the stacked trials, in row order."""
        return [row.key for row in self._rows]

    def add(
        self, key: Hashable, config: TrainingConfig, seed: int, settings: VectorizedSettings
    ) -> None:
        """Stack one more trial (its `vectorized_settings`), initialised exactly as
        `TrialTraining` initialises it. All or nothing: if it fails, the stack is unchanged."""
        if (settings.rule, dict(settings.flags), config.batch_size) != (
            self.rule,
            self.flags,
            self.batch_size,
        ):
            raise ValueError(f"{config.optimizer} does not belong in this stack")
        torch.manual_seed(seed)
        trainable = build_trainable(
            self.spec.workload,
            TrialContext(
                seed=seed, device=self.device, batch_size=self.batch_size, params=config.params
            ),
        )
        rates, plateau = learning_rate_table(
            config, trainable.steps_per_epoch(), self.spec.budget.epochs, self.spec.direction
        )
        order = torch.Generator().manual_seed(seed)
        if self._template is None:
            self._start(trainable)
        try:
            for name, param in trainable.model.named_parameters():
                self._params[name] = torch.cat([self._params[name], param.detach()[None]])
            self._optimizer.append(settings)
            self._append_row(
                order=self._permutation(order),
                position=torch.zeros((), dtype=torch.long),
                step=torch.zeros((), dtype=torch.long),
                rate=torch.tensor(rates, dtype=torch.float64),
                max_norm=torch.tensor(config.max_grad_norm or math.inf),
                loss_sum=torch.zeros((), dtype=torch.float64),
                start_loss=torch.tensor(math.nan, dtype=torch.float64),
            )
        except BaseException:  # out of memory part-way: drop the part-added row
            self._select(list(range(len(self._rows))))
            raise
        self._rows.append(_Row(key, order, plateau, config.max_grad_norm is not None))

    def remove(self, keys: list[Hashable]) -> None:
        """Take these trials out of the stack (finished, pruned or failed)."""
        keep = [index for index, row in enumerate(self._rows) if row.key not in keys]
        self._select(keep)
        self._rows = [self._rows[index] for index in keep]

    def _select(self, keep: list[int]) -> None:
        """Keep only these rows of every per-trial tensor, in this order."""
        rows = torch.tensor(keep, dtype=torch.long, device=self.device)
        for mapping in (self._params, self._tensors):
            for name, tensor in mapping.items():
                mapping[name] = tensor.index_select(0, rows)
        self._optimizer.keep(rows)

    def step(self) -> list[Hashable]:
        """One optimizer step of every stacked trial; returns the keys whose epoch just ended."""
        t = self._tensors
        total = len(self._template.train_x)
        offsets = t["position"][:, None] * self.batch_size + torch.arange(
            self.batch_size, device=self.device
        )
        # An epoch's short last batch is padded and masked, so each trial sees its own batch.
        mask = (offsets < total).to(self._template.train_x.dtype)
        samples = t["order"].gather(1, offsets.clamp(max=total - 1))
        grads, losses = self._step_grads(
            self._params, self._template.train_x[samples], self._template.train_y[samples], mask
        )
        grads = list(grads.values())
        if any(row.clips for row in self._rows):
            self._clip(grads, t["max_norm"])
        rates = t["rate"].gather(1, t["step"][:, None]).squeeze(1)
        self._optimizer.step(list(self._params.values()), grads, rates)
        t["loss_sum"] += losses.detach().double()
        t["start_loss"] = torch.where(t["step"] == 0, losses.detach().double(), t["start_loss"])
        t["position"] += 1
        t["step"] += 1
        per_epoch = self._template.steps_per_epoch()
        ended = []
        for row in self._rows:
            row.steps += 1
            if row.steps % per_epoch == 0:
                ended.append(row.key)
        return ended

    def end_epoch(self, key: Hashable) -> EpochResult:
        """Evaluate one trial whose epoch just ended, and set it up for its next epoch."""
        index = self.keys.index(key)
        row, t = self._rows[index], self._tensors
        weights = {name: param[index] for name, param in self._params.items()}
        per_epoch = self._template.steps_per_epoch()
        train_loss = float(t["loss_sum"][index]) / per_epoch
        metrics = self._template.evaluate(
            lambda images: functional_call(self._template.model, weights, (images,))
        )
        value = metrics[self.spec.metric]
        if row.plateau is not None and math.isfinite(value):
            row.plateau.step(value)
            t["rate"][index] = row.plateau.optimizer.param_groups[0]["lr"]
        rate = float(t["rate"][index, row.steps])
        if row.steps < per_epoch * self.spec.budget.epochs:  # another epoch follows
            t["order"][index] = self._permutation(row.order)
            t["position"][index] = 0
            t["loss_sum"][index] = 0
        start_loss = float(t["start_loss"][index])
        return EpochResult(train_loss, parameter_norm(weights.values()), metrics, rate, start_loss)

    def state_dict(self, key: Hashable) -> dict[str, Any]:
        """One trial's state between epochs (copied), for its checkpoint: its weights, its
        optimizer row, its per-trial tensors and host-side counters."""
        index = self.keys.index(key)
        row = self._rows[index]
        return {
            "params": {name: param[index].clone() for name, param in self._params.items()},
            "optimizer": self._optimizer.row_state(index),
            "tensors": {name: tensor[index].clone() for name, tensor in self._tensors.items()},
            "order": row.order.get_state(),
            "plateau": None if row.plateau is None else row.plateau.state_dict(),
            "steps": row.steps,
        }

    def load_state_dict(self, key: Hashable, state: dict[str, Any]) -> None:
        """Continue one stacked trial from a checkpoint's `state_dict`."""
        index = self.keys.index(key)
        row = self._rows[index]
        if (row.plateau is None) != (state["plateau"] is None):
            raise ValueError("the checkpoint holds another schedule's state")
        for mapping, saved in ((self._params, state["params"]), (self._tensors, state["tensors"])):
            if set(saved) != set(mapping):
                raise ValueError("the checkpoint holds another model's state")
            for name, tensor in mapping.items():
                tensor[index] = saved[name]
        self._optimizer.load_row(index, state["optimizer"])
        row.order.set_state(state["order"])
        if row.plateau is not None:
            row.plateau.load_state_dict(state["plateau"])
        row.steps = state["steps"]

    def _start(self, trainable: MiniBatchTask) -> None:
        """Take the workload's data and model shape from the first trial stacked."""
        self._template = trainable
        self._params = {
            name: param.detach().new_empty((0, *param.shape))
            for name, param in trainable.model.named_parameters()
        }
        self._optimizer = VectorizedOptimizer(self.rule, self.flags, list(self._params.values()))

    def _append_row(self, **values: Tensor) -> None:
        for name, value in values.items():
            row = value.to(self.device)[None]
            self._tensors[name] = (
                torch.cat([self._tensors[name], row]) if name in self._tensors else row
            )

    def _permutation(self, order: torch.Generator) -> Tensor:
        # Drawn on the CPU from the trial's generator, as MiniBatchTask.epoch draws it alone.
        return torch.randperm(len(self._template.train_x), generator=order).to(self.device)

    def _trial_loss(self, weights: dict[str, Tensor], inputs, targets, mask) -> Tensor:
        """One trial's mean loss over the unmasked samples of its batch (vmapped over trials)."""
        outputs = functional_call(self._template.model, weights, (inputs,))
        losses = self._template.sample_losses(outputs, targets)
        return (losses * mask).sum() / mask.sum()

    @staticmethod
    def _clip(grads: list[Tensor], max_norm: Tensor) -> None:
        """clip_grad_norm_ per trial: each trial's gradients scaled by its own total norm."""
        norms = torch.stack([grad.flatten(1).norm(dim=1) for grad in grads]).norm(dim=0)
        scale = (max_norm / (norms + _CLIP_EPSILON)).clamp(max=1.0)
        for grad in grads:
            grad.mul_(per_slot(scale, grad))


def _ends(param: Param) -> tuple[object, object]:
    """A declared parameter's two most different values: its range's ends, its first and
    last choices, or its fixed value twice."""
    if param.kind == "categorical":
        return param.choices[0], param.choices[-1]
    if param.kind == "fixed":
        return param.value, param.value
    if param.kind == "int":
        return int(param.low), int(param.high)
    return param.low, param.high


def shape_changing_param(spec: StudySpec) -> str | None:
    """Why the study's trials cannot be stacked (its model's shapes depend on one of the
    user's ``[params]``), or None. Each parameter is tried at both ends, the others at their
    first value, on the CPU: stacked trials share one model's shapes (tuner.execution.stacked).
    """
    params = spec.declared_params()
    first = {name: _ends(param)[0] for name, param in params.items()}

    def shapes(values: dict[str, object]) -> list[tuple[str, tuple[int, ...]]]:
        context = TrialContext(
            seed=spec.seed, device=torch.device("cpu"), batch_size=1, params=values
        )
        model = build_trainable(spec.workload, context).model
        return [(name, tuple(p.shape)) for name, p in model.named_parameters()]

    base = shapes(first) if params else []
    for name, param in params.items():
        low, high = _ends(param)
        for value in (low, high):
            if shapes({**first, name: value}) != base:
                return (
                    f"[params] {name}: the model's shapes change with it ({first[name]!r} and "
                    f"{value!r} differ), and stacked trials share one model's shapes: set "
                    "[execution] trials_per_worker = 1 (leave out --batch)"
                )
    return None
