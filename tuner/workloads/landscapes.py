"""The seeds' loss landscapes: a point moved by the optimizer over a known 1-D or 2-D surface.

Small enough to run hundreds of trials a minute, and the place to see optimizer behaviour:
Rosenbrock's curved valley (SGD vs momentum), Himmelblau's four minima, and a double well
whose shallow minimum traps small learning rates. Optional gradient noise stands in for the
mini-batch noise that lets a large learning rate escape the shallow minimum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from pydantic import Field

from tuner.workloads.base import Options, TrialContext, Workload

SurfaceFunction = Callable[[torch.Tensor], torch.Tensor]


def rosenbrock(p: torch.Tensor) -> torch.Tensor:
    """(1 − x)² + 100 (y − x²)²: minimum 0 at (1, 1) at the end of a curved valley."""
    x, y = p[0], p[1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def himmelblau(p: torch.Tensor) -> torch.Tensor:
    """(x² + y − 11)² + (x + y² − 7)²: four minima of value 0, one at (3, 2)."""
    x, y = p[0], p[1]
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def double_well(p: torch.Tensor) -> torch.Tensor:
    """x⁴ − 2x² + x/2: a shallow minimum near x = 0.93 (−0.52), a deep one near x = −1.06 (−1.51).

    The barrier between them sits near x = 0.13; a run started at x = 2 falls into the
    shallow one unless its steps are large enough (or noisy enough) to jump the barrier.
    """
    x = p[0]
    return x**4 - 2 * x**2 + 0.5 * x


class LandscapeOptions(Options):
    """Where the point starts, how many steps make an epoch, and the gradient noise."""

    start: list[float] | None = None
    steps_per_epoch: int = Field(default=100, gt=0)
    noise: float = Field(default=0.0, ge=0.0)


class Landscape:
    """A point on a surface; its only parameter is its position."""

    def __init__(
        self, surface: SurfaceFunction, start: list[float], options: LandscapeOptions, seed: int
    ):
        self.surface = surface
        self.options = options
        self.model = torch.nn.Module()
        self.model.position = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
        self._noise = torch.Generator().manual_seed(seed)

    def steps_per_epoch(self) -> int:
        return self.options.steps_per_epoch

    def _step_loss(self) -> torch.Tensor:
        position = self.model.position
        loss = self.surface(position)
        if self.options.noise:
            # Adding noise·ξ·p to the loss adds noise·ξ to the gradient and nothing to the
            # surface the optimizer is judged on: mini-batch noise, as in the seeds' demo.
            xi = torch.randn(position.shape, generator=self._noise, dtype=position.dtype)
            loss = loss + self.options.noise * (xi * position).sum()
        return loss

    def epoch(self, generator: torch.Generator) -> Iterator[Callable[[], torch.Tensor]]:
        return (self._step_loss for _ in range(self.options.steps_per_epoch))

    def evaluate(self) -> dict[str, float]:
        position = self.model.position.detach()
        coordinates = dict(zip("xy", position.tolist(), strict=False))
        return {"loss": float(self.surface(position)), **coordinates}


@dataclass(frozen=True)
class Surface:
    """One landscape's registry entry: its function and what a view of it needs to know.

    Attributes:
        function: the loss at a position (a tensor whose first axis is the coordinates).
        start: where the point starts unless the study file says otherwise.
        description: one line, for the study note and the workload listing.
        view: the (low, high) range per coordinate where the surface is usually looked at.
        minima: its known global minima (2-D surfaces; a 1-D view finds them on its grid).
    """

    function: SurfaceFunction
    start: list[float]
    description: str
    view: tuple[tuple[float, float], ...]
    minima: tuple[tuple[float, ...], ...] = ()


SURFACES: dict[str, Surface] = {
    "rosenbrock": Surface(
        rosenbrock,
        [-1.0, 1.0],
        "Rosenbrock's valley from (-1, 1); minimum 0 at (1, 1)",
        view=((-2.0, 2.0), (-1.0, 3.0)),
        minima=((1.0, 1.0),),
    ),
    "himmelblau": Surface(
        himmelblau,
        [0.0, 0.0],
        "Himmelblau's function from (0, 0); four minima of value 0",
        view=((-5.0, 5.0), (-5.0, 5.0)),
        minima=(
            (3.0, 2.0),
            (-2.805118, 3.131312),
            (-3.779310, -3.283186),
            (3.584428, -1.848126),
        ),
    ),
    "double_well": Surface(
        double_well,
        [2.0],
        "1-D double well from x = 2: shallow minimum -0.52 at x = 0.93, deep -1.51 at -1.06",
        view=((-2.0, 2.5),),
    ),
}


def _landscape(name: str, surface: Surface) -> Workload:
    def build(options: LandscapeOptions, context: TrialContext) -> Landscape:
        chosen = options.start or surface.start
        if len(chosen) != len(surface.start):
            raise ValueError(f"{name}: start needs {len(surface.start)} coordinates, got {chosen}")
        return Landscape(surface.function, chosen, options, context.seed)

    return Workload(
        name=name,
        description=surface.description,
        options=LandscapeOptions,
        metrics={"loss": "minimize"},
        default_metric="loss",
        build=build,
        uses_batches=False,
    )


WORKLOADS = [_landscape(name, surface) for name, surface in SURFACES.items()]
