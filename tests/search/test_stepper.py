"""`Stepper`: one plain loop for every configuration a study can draw (clipping, plateau,
Schedule-Free, per-step schedules), on a real model and the real optimizers."""

from __future__ import annotations

import pytest
import torch

from tuner.config import TrainingConfig


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 1)


def _backward(model: torch.nn.Module, scale: float = 1.0) -> None:
    (scale * model(torch.ones(8, 4)).pow(2).sum()).backward()


def test_a_per_step_schedule_steps_with_the_optimizer() -> None:
    config = TrainingConfig(
        optimizer="sgd", target="torch.optim:SGD", learning_rate=0.1, schedule="cosine"
    )
    model = _model()
    stepper = config.build_stepper(model.parameters(), steps_per_epoch=2, epochs=2)
    rates = []
    for _ in range(2):
        stepper.zero_grad()
        _backward(model)
        stepper.step()
        rates.append(stepper.optimizer.param_groups[0]["lr"])
    assert rates[0] > rates[1]  # annealed step by step
    stepper.end_epoch(1.0)  # nothing more to step
    assert stepper.optimizer.param_groups[0]["lr"] == rates[1]


@pytest.mark.parametrize(("direction", "worse"), [("minimize", 2.0), ("maximize", -2.0)])
def test_plateau_steps_once_an_epoch_on_the_metric_in_its_direction(
    direction: str, worse: float
) -> None:
    config = TrainingConfig(
        optimizer="sgd", target="torch.optim:SGD", learning_rate=0.1, schedule="plateau"
    )
    model = _model()
    stepper = config.build_stepper(model.parameters(), 1, 50, direction)  # type: ignore[arg-type]
    stepper.zero_grad()
    _backward(model)
    stepper.step()
    assert stepper.optimizer.param_groups[0]["lr"] == 0.1  # not stepped per step
    stepper.end_epoch(worse / 2)
    for _ in range(20):  # the metric only gets worse: the rate is cut
        stepper.end_epoch(worse)
    assert stepper.optimizer.param_groups[0]["lr"] < 0.1


def test_clipping_bounds_the_gradient_norm_before_the_step() -> None:
    config = TrainingConfig(
        optimizer="sgd", target="torch.optim:SGD", learning_rate=1.0, max_grad_norm=0.5
    )
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    stepper = config.build_stepper(model.parameters(), 1, 1)
    stepper.zero_grad()
    _backward(model, scale=1e3)
    stepper.step()
    moved = torch.cat(
        [(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)]
    )
    # SGD at rate 1 moves by the clipped gradient: its norm is the threshold (within float32
    # rounding of the weights it was added to).
    tolerance = 100 * torch.finfo(torch.float32).eps
    assert torch.linalg.vector_norm(moved.double()).item() == pytest.approx(0.5, rel=tolerance)


def test_schedule_free_switches_between_training_and_evaluation_weights() -> None:
    config = TrainingConfig(
        optimizer="schedulefree_adamw",
        target="pytorch_optimizer:ScheduleFreeAdamW",
        learning_rate=0.01,
        schedule_free=True,
    )
    model = _model()
    stepper = config.build_stepper(model.parameters(), 1, 1)
    stepper.train()
    for _ in range(3):
        stepper.zero_grad()
        _backward(model)
        stepper.step()
    training_weights = model.weight.detach().clone()
    stepper.eval()
    assert not torch.equal(model.weight, training_weights)  # the averaged weights
    stepper.train()
    assert torch.allclose(model.weight, training_weights)
