"""The seeds' regression problems: linear regression and a Dense(64, relu) → 1 MLP.

Synthetic data, generated once from `data_seed` so every trial of a study fits the same
points; only the model's initialisation and the batch order follow the trial's seed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field

from tuner.workloads.base import MiniBatchTask, Options, TrialContext, Workload


class RegressionOptions(Options):
    """Size of the synthetic problem (the seeds use 1000 samples of 10 features, noise 0.1)."""

    samples: int = Field(default=1000, gt=1)
    features: int = Field(default=10, gt=0)
    noise: float = Field(default=0.1, ge=0)
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    data_seed: int = 0


class Regression(MiniBatchTask):
    """Mean-squared-error regression on tensors kept on the trial's device."""

    def __init__(
        self,
        model: torch.nn.Module,
        options: RegressionOptions,
        teacher: Callable,
        context: TrialContext,
    ):
        data = torch.Generator().manual_seed(options.data_seed)
        inputs = torch.randn(options.samples, options.features, generator=data)
        targets = teacher(inputs, data) + options.noise * torch.randn(
            options.samples, 1, generator=data
        )
        n_val = max(1, round(options.validation_fraction * options.samples))
        self.train_x, self.val_x = (
            inputs[n_val:].to(context.device),
            inputs[:n_val].to(context.device),
        )
        self.train_y, self.val_y = (
            targets[n_val:].to(context.device),
            targets[:n_val].to(context.device),
        )
        self.model = model.to(context.device)
        self.batch_size = context.batch_size

    def sample_losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ((outputs - targets) ** 2).mean(dim=1)

    def validation_terms(
        self, outputs: torch.Tensor, targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {"val_loss": self.sample_losses(outputs, targets)}


def _linear_teacher(inputs: torch.Tensor, data: torch.Generator) -> torch.Tensor:
    return inputs @ torch.randn(inputs.shape[1], 1, generator=data)


def _mlp_teacher(inputs: torch.Tensor, data: torch.Generator) -> torch.Tensor:
    hidden = torch.tanh(inputs @ torch.randn(inputs.shape[1], 16, generator=data))
    return hidden @ torch.randn(16, 1, generator=data)


def _build_linear(options: RegressionOptions, context: TrialContext) -> Regression:
    torch.manual_seed(context.seed)
    return Regression(torch.nn.Linear(options.features, 1), options, _linear_teacher, context)


def _build_mlp(options: RegressionOptions, context: TrialContext) -> Regression:
    torch.manual_seed(context.seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(options.features, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)
    )
    return Regression(model, options, _mlp_teacher, context)


WORKLOADS = [
    Workload(
        "linear_regression",
        "Linear regression, 1000×10 Gaussian inputs, noise 0.1",
        RegressionOptions,
        {"val_loss": "minimize"},
        "val_loss",
        _build_linear,
    ),
    Workload(
        "mlp_regression",
        "Dense(64, relu) → 1 MLP on a tanh teacher, noise 0.1",
        RegressionOptions,
        {"val_loss": "minimize"},
        "val_loss",
        _build_mlp,
    ),
]
