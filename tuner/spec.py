"""Study files (`studies/*.toml`) validated into typed, frozen objects.

A spec says what to tune (workload, metric, direction), over what (optimizers and their
ranges, schedules, clipping, batch sizes), for how long (budget), how (sampler, pruner) and
where (workers and their resources). Every mistake becomes a `SpecError` naming the file, the
key and what was expected, before anything touches storage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from tuner.errors import SpecError
from tuner.search.optimizers import (
    KNOB_SCALES,
    LIBRARY_NAMES,
    REGISTRY,
    Knob,
    OptimizerSpec,
    import_target,
    knob,
)
from tuner.search.params import Param, parse_param, reserved
from tuner.search.pruners import PRUNERS
from tuner.search.samplers import SAMPLERS
from tuner.search.schedules import SCHEDULES

Direction = Literal["minimize", "maximize"]
Toggle = Literal["off", "on", "search"]
# Strict: TOML's `true` is no count and no number (pydantic would read it as 1). A float
# field still takes an integer (`epochs = 3.0` is refused, `max_grad_norm = 5` is not).
Int = Annotated[int, Field(strict=True)]
Number = Annotated[float, Field(strict=True)]
Range = tuple[Number, Number]
_M = TypeVar("_M", bound=BaseModel)
#: Seeds feed numpy's legacy RandomState (Optuna's samplers), which takes 0 ≤ seed < 2**32.
SEED_LIMIT = 2**32
#: The longest study name the database holds: Optuna's ``study_name`` column is VARCHAR(512)
#: (tests/storage/test_optuna_internals.py checks it against the schema).
NAME_LIMIT = 512
#: Trial numbers and epochs (Optuna's ``step``) are 32-bit INTEGER columns: a budget beyond
#: them could never be recorded, so it is refused with the rest of the file.
ROW_NUMBER_LIMIT = 2**31 - 1


def bounds(value: float | tuple[float, float]) -> tuple[float, float]:
    """A setting given as a number or a [low, high] range, as a range (a number: low = high)."""
    return value if isinstance(value, tuple) else (value, value)


def _registered(concept: str, name: str, registry: Mapping[str, Any]) -> str:
    """`name` if the registry has it; else ValueError naming the ones it has."""
    if name not in registry:
        raise ValueError(f"unknown {concept} {name!r}; known: {', '.join(registry)}")
    return name


class _Model(BaseModel):
    # allow_inf_nan=False: a NaN or infinite number is refused where it is read, with its key.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class WorkloadSpec(_Model):
    """What to train: a registry name, user code as ``module:function`` (a training function
    or a workload factory, tuner.workloads.user), or a command run once per trial."""

    name: str = ""
    #: A program run once per trial (tuner.execution.script), instead of a name.
    command: list[str] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    #: Folders user code is imported from (and a command runs in the first), before sys.path:
    #: the study file's folder and the working directory, filled in by `load_spec`.
    search_path: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _name_or_command(self) -> WorkloadSpec:
        if bool(self.name) == bool(self.command):
            raise ValueError(
                "give either name (a registry workload or 'module:function') or "
                "command (a program run once per trial), not both or neither"
            )
        return self


class SearchSpec(_Model):
    """The shared part of the search space; per-optimizer ranges live in ``[optimizers.*]``."""

    optimizers: list[str] = Field(default_factory=lambda: ["sgd", "momentum", "adam", "adamw"])
    schedules: list[str] = Field(default_factory=lambda: ["constant"])
    warmup_fraction: Number | Range = (0.0, 0.2)
    weight_decay: Toggle = "search"
    grad_clipping: Toggle = "off"
    max_grad_norm: Number | Range = (0.1, 10.0)
    lookahead: Toggle = "off"
    batch_sizes: list[Int] = Field(default_factory=lambda: [128])
    #: Earlier studies in the same storage whose results seed a new study (tuner.study.warm_start).
    warm_start: list[str] = Field(default_factory=list)

    @field_validator("warm_start")
    @classmethod
    def _distinct_studies(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("names a study twice")
        return value

    @field_validator("optimizers", "schedules", "batch_sizes")
    @classmethod
    def _not_empty(cls, value: list[Any]) -> list[Any]:
        if not value:
            raise ValueError("must name at least one choice")
        if len(set(value)) != len(value):
            raise ValueError("lists a choice twice")
        return value

    @field_validator("schedules")
    @classmethod
    def _known_schedules(cls, value: list[str]) -> list[str]:
        return [_registered("schedule", name, SCHEDULES) for name in value]

    @field_validator("batch_sizes")
    @classmethod
    def _positive_batches(cls, value: list[int]) -> list[int]:
        if any(size < 1 for size in value):
            raise ValueError("batch sizes must be positive integers")
        return value

    @field_validator("warmup_fraction")
    @classmethod
    def _fraction(cls, value: float | tuple[float, float]) -> float | tuple[float, float]:
        low, high = bounds(value)
        if not 0.0 <= low <= high < 1.0:
            raise ValueError("expected a fraction in [0, 1), or a range [low, high] within it")
        return value

    @field_validator("max_grad_norm")
    @classmethod
    def _norm(cls, value: float | tuple[float, float]) -> float | tuple[float, float]:
        low, high = bounds(value)
        if not 0.0 < low <= high:
            raise ValueError(
                "expected a positive norm, or a range [low, high] with 0 < low <= high"
            )
        return value


class ConfirmSpec(_Model):
    """After the search, re-train the `top` configurations on `seeds` fresh seeds each
    (tuner.study.confirmation); rankings then use the mean over those seeds."""

    top: Int = Field(default=3, gt=0)
    seeds: Int = Field(default=3, gt=0)


class BudgetSpec(_Model):
    """How many trials, how long, how many epochs each trial may train, and the confirmation
    of the winners on fresh seeds (beyond the trial budget)."""

    trials: Int | None = Field(default=None, gt=0, le=ROW_NUMBER_LIMIT)
    timeout_seconds: Number | None = Field(default=None, gt=0)
    epochs: Int = Field(default=10, gt=0, le=ROW_NUMBER_LIMIT)
    confirm: ConfirmSpec | None = None

    @model_validator(mode="after")
    def _bounded(self) -> BudgetSpec:
        if self.trials is None and self.timeout_seconds is None:
            raise ValueError("set trials, timeout_seconds or both, or the study never ends")
        if self.confirm and self.trials is not None and self.confirm.top > self.trials:
            raise ValueError(
                f"confirm top = {self.confirm.top} is more configurations than the "
                f"{self.trials} trials of the budget can finish: confirm top = {self.trials} "
                "or fewer, or raise trials"
            )
        return self


class SamplerSpec(_Model):
    """Optuna sampler; TPE (multivariate, constant liar for parallel workers) by default.

    ``grid`` compares the optimizers head to head: trial i trains ``optimizers[i % n]`` (so
    ``trials = n × repeats`` repeats each with new seeds), other parameters sampled at random.
    """

    name: str = "tpe"
    #: None: the sampler's own default (tuner.search.samplers: TPE 20, CMA-ES and GP 10).
    n_startup_trials: Int | None = Field(default=None, ge=0)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return _registered("sampler", name, SAMPLERS)


class PrunerSpec(_Model):
    """Optuna pruner; asynchronous successive halving by default (ASHA, Li et al. 2020):
    measured with bench/search_efficiency.py it reached a target with less training than
    Hyperband, whose conservative brackets train many trials in full (docs/benchmarks.md).

    ``reduction_factor`` unset is the pruner's own default (its tuner.search.pruners entry).
    """

    name: str = "successive_halving"
    min_resource: Int = Field(default=1, gt=0)
    reduction_factor: Int | None = Field(default=None, gt=1)
    n_startup_trials: Int = Field(default=5, ge=0)
    n_warmup_steps: Int = Field(default=1, ge=0)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return _registered("pruner", name, PRUNERS)


class ExecutionSpec(_Model):
    """Where trials run: worker count, resources per trial, cluster and storage addresses."""

    workers: Int = Field(default=1, gt=0)
    cpus_per_trial: Number = Field(default=1.0, gt=0)
    gpus_per_trial: Number | Literal["auto"] = "auto"
    #: Trials one worker trains at once, stacked where their optimizer allows
    #: (tuner.execution.stacked): "auto" is 64 on a GPU and 1 on a CPU.
    trials_per_worker: Int | Literal["auto"] = 1
    ray_address: str | None = None
    #: What runs the workers: Ray (a cluster, or a private local instance), or processes of
    #: this machine (tuner.execution.local). "auto": Ray where a cluster is named or this
    #: process already runs Ray, local processes otherwise.
    backend: Literal["auto", "ray", "local"] = "auto"
    storage: str | None = None
    #: A running trial records a heartbeat every interval; one silent for longer than grace
    #: (its worker died) becomes FAIL and is retried once with the same parameters.
    heartbeat_seconds: Int = Field(default=5, ge=1)
    grace_seconds: Int = Field(default=20, ge=2)
    #: How long the study's processes retry while the database is unreachable before they
    #: stop (tuner.storage.rdb.RetryingRDBStorage; the default is its RECONNECT_SECONDS).
    reconnect_seconds: Int = Field(default=120, ge=1)
    #: A trial's training state is saved every this many epochs (0: never), so that its
    #: re-run resumes there (tuner.storage.checkpoints).
    checkpoint_every: Int = Field(default=1, ge=0)
    #: Keep the best finished trial's last checkpoint (`BestConfig.checkpoint`).
    keep_best_checkpoint: bool = False

    @model_validator(mode="after")
    def _grace_outlasts_heartbeat(self) -> ExecutionSpec:
        if self.grace_seconds <= self.heartbeat_seconds:
            raise ValueError("grace_seconds must be longer than heartbeat_seconds")
        return self

    @model_validator(mode="after")
    def _local_stays_local(self) -> ExecutionSpec:
        if self.backend == "local" and self.ray_address:
            raise ValueError(
                "backend 'local' runs on this machine only: leave ray_address out, or set "
                "backend = 'ray' to run on that cluster"
            )
        return self

    @field_validator("trials_per_worker")
    @classmethod
    def _trials_per_worker(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("expected a positive number of trials, or 'auto'")
        return value

    @field_validator("gpus_per_trial")
    @classmethod
    def _gpus(cls, value: float | str) -> float | str:
        if isinstance(value, float) and value < 0:
            raise ValueError("expected a non-negative number of GPUs, or 'auto'")
        return value


class StudySpec(_Model):
    """A whole study file, validated. Build with `load_spec` or `parse_spec`."""

    name: str = Field(min_length=1, max_length=NAME_LIMIT, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    metric: str | None = None
    direction: Direction | None = None
    seed: Int = Field(default=0, ge=0, lt=SEED_LIMIT)
    workload: WorkloadSpec
    search: SearchSpec = Field(default_factory=SearchSpec)
    optimizers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: The user's own parameters (tuner.search.params), as the file gives them.
    params: dict[str, Any] = Field(default_factory=dict)
    budget: BudgetSpec
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec)
    #: The searched optimizers as resolved at validation: every trial samples from these.
    _choices: list[OptimizerSpec] = PrivateAttr(default_factory=list)
    #: The ``[params]`` entries as read at validation.
    _params: dict[str, Param] = PrivateAttr(default_factory=dict)
    _knobs: set[str] = PrivateAttr(default_factory=set)

    @field_validator("name")
    @classmethod
    def _not_a_folder_step(cls, name: str) -> str:
        # The name is a folder of the artifact store: "." and ".." would be this one or above.
        if set(name) == {"."}:
            raise ValueError("dots alone are no study name; use letters, digits, _ . -")
        return name

    @model_validator(mode="after")
    def _resolve(self) -> StudySpec:
        """Check the workload and metric, and every optimizer table against its library class."""
        from tuner.workloads import owns_loop, resolve_metric

        if self.name in self.search.warm_start:
            raise ValueError(
                f"[search] warm_start: study {self.name!r} cannot warm-start from itself; "
                "name earlier studies"
            )
        metric, direction = resolve_metric(self.workload, self.metric, self.direction)
        object.__setattr__(self, "metric", metric)
        object.__setattr__(self, "direction", direction)
        if owns_loop(self.workload) and self.execution.trials_per_worker != 1:
            # Stacking needs tuner's own loop; saying so beats training one at a time silently.
            raise ValueError(
                "[execution] trials_per_worker: a training function or command trains one "
                "trial at a time per worker; set 1 (and leave out --batch), and add workers"
            )
        # A table for an optimizer that is not searched is kept for later, but checked too,
        # so a misspelt [optimizers.adma] is caught rather than silently ignored. Each is
        # resolved and built by its library once, here; trials sample from the result.
        tables = {name: self.optimizers.get(name, {}) for name in self.search.optimizers}
        resolved: dict[str, OptimizerSpec] = {}
        for name, table in {**tables, **self.optimizers}.items():
            resolved[name] = resolve_optimizer(name, table)
            _check_with_library(resolved[name])
        self._choices = [resolved[name] for name in self.search.optimizers]
        # Every optimizer's knobs, searched here or not: `momentum` is tuner's name everywhere.
        self._knobs = {
            name
            for choice in (*resolved.values(), *REGISTRY.values())
            for name in (*choice.knobs, *choice.fixed)
        }
        for name, raw in self.params.items():
            try:
                if (why := reserved(name, self._knobs)) is not None:
                    raise ValueError(why)
                self._params[name] = parse_param(name, raw)
            except ValueError as error:
                raise ValueError(f"[params] {name}: {error}") from None
        return self

    def optimizer_choices(self) -> list[OptimizerSpec]:
        """The searched optimizers with their final ranges (registry entries merged with the
        file's tables), in the order of the file."""
        return list(self._choices)

    def declared_params(self) -> dict[str, Param]:
        """The user's ``[params]``, read, in the order of the file."""
        return dict(self._params)

    def reserved(self, name: str) -> str | None:
        """Why `name` cannot be a parameter of the user's (tuner's own, or an optimizer
        knob's), or None when it can."""
        return reserved(name, self._knobs)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data, for recording in the study (a study says how it was made)."""
        return self.model_dump(mode="json")


def _is_number(value: Any) -> bool:
    """A finite int or float (TOML's ``true`` is no number; ``nan`` and ``inf`` no bound)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _as_knob(name: str, optimizer: str, value: Any) -> Knob | Any:
    """A ``[low, high]`` list becomes a searched Knob; anything else is a fixed value."""
    where = f"[optimizers.{optimizer}] {name}"
    if isinstance(value, dict):
        raise ValueError(f"{where}: expected a value or [low, high], got a table {value}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number, got {value}")
    if not isinstance(value, list):
        return value
    if len(value) != 2 or not all(_is_number(v) for v in value):
        raise ValueError(f"{where}: expected [low, high] finite numbers, got {value}")
    low, high = float(value[0]), float(value[1])
    if low > high:
        raise ValueError(f"{where}: low {low:g} is above high {high:g}")
    scale = KNOB_SCALES.get(name, "log" if low > 0 else "linear")
    if scale == "log" and low <= 0:
        raise ValueError(
            f"{where}: bounds must be positive (it is searched log-uniformly), "
            f"got [{low:g}, {high:g}]"
        )
    if scale == "log_complement" and not 0 <= low <= high < 1:
        raise ValueError(f"{where}: expected bounds in [0, 1), got [{low:g}, {high:g}]")
    if all(isinstance(v, int) for v in value) and scale == "linear":
        scale = "int"
    return Knob(low, high, scale)


def _positive_knob(name: str, optimizer: str, value: Knob | Any, hint: str = "") -> Knob:
    """learning_rate or weight_decay: a positive number (fixed) or a positive range."""
    if not isinstance(value, Knob):
        if not _is_number(value):
            raise ValueError(
                f"[optimizers.{optimizer}] {name}: expected a number or [low, high] > 0{hint}, "
                f"got {value!r}"
            )
        value = Knob(float(value), float(value), "log")
    if value.low <= 0:
        raise ValueError(
            f"[optimizers.{optimizer}] {name}: expected a number or [low, high] > 0{hint}"
        )
    return value


#: The library's names that `LIBRARY_NAMES` maps to, refused in favour of ours (``betas``
#: would be sampled and then overwritten by beta1/beta2).
_OUR_NAMES = {"lr": "learning_rate", "betas": "beta1 and beta2", "params": None}


def _check_kwargs(optimizer: str, target: str, names: list[str]) -> None:
    """Refuse keys the library class does not document (typos such as ``learnig_rate``).

    Only the constructor's named arguments count: every pytorch-optimizer class also takes
    ``**kwargs`` and silently ignores what lands there (``bta1``, ``foo``).
    """
    try:
        parameters = inspect.signature(import_target(target).__init__).parameters
    except ValueError as error:
        raise ValueError(f"[optimizers.{optimizer}] class: {error}") from None
    named = {
        name
        for name, parameter in parameters.items()
        if parameter.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    } - {"self", "params"}
    for name in names:
        if name in _OUR_NAMES:
            instead = _OUR_NAMES[name]
            raise ValueError(
                f"[optimizers.{optimizer}] {name}: not a knob"
                + (f"; write {instead}" if instead else "")
            )
        if LIBRARY_NAMES.get(name, name) not in named:
            accepted = sorted(named - {"lr", "betas"})
            betas = "beta1, beta2, " if "betas" in named else ""
            raise ValueError(
                f"[optimizers.{optimizer}] unknown key {name!r} for {target}; it takes "
                f"learning_rate, {betas}{', '.join(accepted)}"
            )


@contextlib.contextmanager
def _dynamo_unloaded() -> Iterator[None]:
    """Build an optimizer without importing torch._dynamo, in a process that has not.

    torch marks ``Optimizer.add_param_group`` as not for torch.compile to trace by importing
    torch._dynamo at its first call (torch._compile._disable_dynamo): 0.8 s, most of a
    command's start-up after torch itself, for a mark only torch.compile reads, and nothing
    compiles in a spec check. The mark is cached on the plain function as ``__dynamo_disable``:
    for the check, the plain function stands in for it, and the cache is emptied after.
    """
    import torch

    plain = torch.optim.Optimizer.add_param_group.__wrapped__
    if "torch._dynamo" in sys.modules or hasattr(plain, "__dynamo_disable"):
        yield
        return
    setattr(plain, "__dynamo_disable", plain)
    try:
        yield
    finally:
        delattr(plain, "__dynamo_disable")


def _check_with_library(choice: OptimizerSpec) -> None:
    """Build the library optimizer with the fixed values and each end of the searched ranges,
    so a value it refuses (``momentum = -3``, ``momentum = "high"``) is an error in the study
    file, not a failure of every trial. The library's own validation decides."""
    import torch

    from tuner.search.optimizers import library_defaults, optimizer_kwargs

    optimizer_class = import_target(choice.target)
    defaults = library_defaults(optimizer_class)

    def refusal(knobs: dict[str, Any]) -> str | None:
        kwargs = optimizer_kwargs(choice.learning_rate.low, 0.0, knobs, defaults)
        try:
            with _dynamo_unloaded():
                optimizer_class([torch.zeros(1, requires_grad=True)], **kwargs)
        except Exception as error:  # whatever the class raises is its refusal
            return f"{type(error).__name__}: {error}"
        return None

    settings = [
        {**choice.fixed, **{name: getattr(k, end) for name, k in choice.knobs.items()}}
        for end in ("low", "high")
    ]
    for knobs in settings:
        if (reason := refusal(knobs)) is None:
            continue
        # Name the key at fault: the first whose value the class refuses on its own.
        culprit = next((key for key in knobs if refusal({key: knobs[key]})), None)
        if culprit is None:
            raise ValueError(
                f"[optimizers.{choice.name}] {choice.target} refuses {knobs}: {reason}"
            )
        raise ValueError(
            f"[optimizers.{choice.name}] {culprit}: {choice.target} refuses "
            f"{_toml(knobs[culprit])}: {refusal({culprit: knobs[culprit]})}"
        )


def resolve_optimizer(name: str, table: Mapping[str, Any]) -> OptimizerSpec:
    """Merge an ``[optimizers.NAME]`` table into the registry entry (or a custom class): the
    entry as this study searches it."""
    table = dict(table)
    target = table.pop("class", None)
    base: OptimizerSpec | None = REGISTRY.get(name)
    if base is None and target is None:
        raise ValueError(
            f"unknown optimizer {name!r}; known: {', '.join(REGISTRY)}; or name any torch.optim "
            f"or pytorch-optimizer class in [optimizers.{name}] class = 'module:Class'"
        )
    if base is None:
        if "learning_rate" not in table:
            raise ValueError(f"[optimizers.{name}] needs learning_rate = [low, high]")
        base = OptimizerSpec(name, target, knob("learning_rate", 1e-4, 1e-1))
    target = target or base.target
    _check_kwargs(name, target, [key for key in table if key != "weight_decay"])

    learning_rate, weight_decay = base.learning_rate, base.weight_decay
    knobs, fixed = dict(base.knobs), dict(base.fixed)
    for key, raw in table.items():
        value = _as_knob(key, name, raw)
        if key == "learning_rate":
            learning_rate = _positive_knob(key, name, value)
        elif key == "weight_decay":
            # Like learning_rate, a plain number fixes it; [search] weight_decay still says
            # whether it is applied ("off": never), so 0 is no way to turn it off.
            hint = ' (to turn it off, set [search] weight_decay = "off")'
            weight_decay = _positive_knob(key, name, value, hint)
        elif isinstance(value, Knob):
            knobs[key] = value
            fixed.pop(key, None)
        else:
            fixed[key] = value
            knobs.pop(key, None)
    return dataclasses.replace(
        base,
        target=target,
        learning_rate=learning_rate,
        knobs=knobs,
        fixed=fixed,
        weight_decay=weight_decay,
    )


def _location(loc: tuple[int | str, ...]) -> str:
    """Pydantic's error location in TOML words: ``[budget] trials``. The location stops at
    the key: what follows names the branch of a union (``float``, ``tuple[…]``) or an item."""
    parts: list[str] = []
    for part in loc:
        if not isinstance(part, str) or part in _TYPE_TAGS or "[" in part:
            break
        parts.append(part)
    if len(parts) <= 1:
        return parts[0] if parts else ""
    return f"[{'.'.join(parts[:-1])}] {parts[-1]}"


#: The branch names pydantic puts in the location of an error in a union member.
_TYPE_TAGS = frozenset({"float", "int", "str", "bool"})


def _toml(value: Any) -> str:
    """A value as it reads in TOML (``true``, ``nan``, ``inf``), for error messages."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return repr(value)


class _RecordedExecution(BaseModel):
    """The part of a recorded spec that reading a study needs: [execution], other keys ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec)


def recorded_execution(data: Mapping[str, Any], source: str) -> ExecutionSpec:
    """The [execution] settings of the spec a study recorded, validated alone, as data.

    Validating the whole spec imports the workload module and optimizer classes it names,
    from the folders it names: anyone who can write a study into a shared database could
    then run code as whoever reads it (``tuner status``). Only ``tuner run`` and ``tuner
    worker`` import a study's code.
    """
    return _validated(_RecordedExecution, data, source).execution


def parse_spec(data: Mapping[str, Any], source: str = "<spec>") -> StudySpec:
    """Validate already-parsed TOML data; raise SpecError naming `source`, the key and the fix.

    This imports the code the spec names (its workload, optimizer classes): give it only a
    spec the user chose to run."""
    return _validated(StudySpec, data, source)


def _validated(model: type[_M], data: Mapping[str, Any], source: str) -> _M:
    """`model` validated from `data`, or SpecError naming `source`, the key and the fix."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as error:
        errors = error.errors()
        first = errors[0]
        # A value refused by every branch of a union: the NaN/infinity is what to report.
        where = _location(first["loc"])
        same_key = [e for e in errors if _location(e["loc"]) == where]
        first = next((e for e in same_key if e["type"] == "finite_number"), first)
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown key (check its spelling against docs/reference.md's study file keys)"
        elif first["type"] == "missing":
            message = "missing: this key is required"
        elif first["type"] in ("finite_number", "int_type", "float_type", "int_from_float"):
            message = f"{message}, got {_toml(first['input'])}"
        raise SpecError(
            f"{source}: {where}: {message}" if where else f"{source}: {message}"
        ) from None


def _apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``--set section.key=value``; the value is read as TOML, else as a string."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"--set {assignment!r}: expected key=value, e.g. budget.trials=20")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    *sections, leaf = key.strip().split(".")
    target = data
    for section in sections:
        target = target.setdefault(section, {})
        if not isinstance(target, dict):
            raise SpecError(f"--set {assignment!r}: {section!r} is not a table")
    target[leaf] = value


def load_spec(path: str | Path, overrides: list[str] | None = None) -> StudySpec:
    """Read and validate a study file, applying ``--set`` overrides first.

    Raises:
        SpecError: the file is missing, is not TOML, or is not a valid study.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such study file (see studies/ for examples)") from None
    except UnicodeDecodeError as error:
        raise SpecError(
            f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
            f"{error.start}); TOML files are UTF-8: save it as UTF-8"
        ) from None
    except OSError as error:
        raise SpecError(f"{path}: cannot read: {error.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path}: invalid TOML: {error}") from None
    for assignment in overrides or []:
        _apply_override(data, assignment)
    workload = data.get("workload")
    user_code = isinstance(workload, dict) and (
        ":" in str(workload.get("name", "")) or "command" in workload
    )
    if user_code:
        from tuner.workloads.user import search_path

        given = workload.get("search_path", [])  # type: ignore[union-attr]
        if isinstance(given, list) and all(isinstance(entry, str) for entry in given):
            data["workload"] = {**workload, "search_path": search_path(path, given)}
    return parse_spec(data, str(path))
