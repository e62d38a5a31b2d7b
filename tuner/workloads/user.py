"""User code named in a study file: find its module beside the study file, and tell a training
function from a workload factory.

``[workload] name = "train:train"`` imports ``train`` from the folders in ``search_path`` first
(the study file's folder, then the directory ``tuner run`` started in, both recorded in the
spec when it is loaded, so every Ray worker and ``tuner worker`` finds the module the driver
found), then from ``sys.path``. What the object is follows from its signature, which is
unambiguous: one required parameter, ``train(trial)``, is a training function that owns its
loop (tuner.execution.trial); two, ``factory(options, context)``, is a factory of a `Trainable` that
tuner's loop drives; any other (``train(trial, extra)`` too) is refused before the study exists.
"""

from __future__ import annotations

import importlib
import inspect
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

Kind = Literal["function", "factory"]


def search_path(study_file: Path, given: Sequence[str] = ()) -> list[str]:
    """The absolute folders a study's user module is imported from, in order: the folders the
    file gives (relative to it), the study file's folder, the working directory."""
    folder = study_file.resolve().parent
    folders = [str((folder / entry).resolve()) for entry in given]
    folders += [str(folder), str(Path.cwd().resolve())]
    return list(dict.fromkeys(folders))


def code_to_run(spec: Mapping[str, Any]) -> str:
    """What running a recorded spec executes, in words, read from the spec as data (nothing
    imported): the workload's module or command and the folders it comes from, and any
    optimizer class the spec names. `tuner worker` says it before it runs any of it."""
    workload = spec.get("workload") or {}
    folders = [str(folder) for folder in workload.get("search_path") or []]
    name, command = str(workload.get("name") or ""), workload.get("command")
    if command:
        place = folders[0] if folders else "the working directory"
        said = f"the command `{shlex.join(str(part) for part in command)}` in {place}"
    elif ":" in name:
        said = f"{name}, imported from {', '.join([*folders, 'sys.path'])}"
    else:
        said = f"the built-in workload {name}"
    classes = [
        str(table["class"])
        for table in (spec.get("optimizers") or {}).values()
        if isinstance(table, Mapping) and "class" in table
    ]
    if classes:
        said += f"; optimizer classes {', '.join(classes)}, imported from the same places"
    return said


def import_user(target: str, folders: Sequence[str]) -> Any:
    """Import ``module:name`` from `folders` first, then sys.path.

    The folders go to the front of sys.path for good, not just for the import: the user's
    module may import its neighbours later, while training.

    Raises:
        ValueError: the target is malformed, its module is not in any of those places, or
            importing it failed (the message names where it looked, or the error inside).
    """
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{target!r} is not of the form 'module:function' (e.g. 'train:train')")
    for folder in reversed(folders):
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)
    _forget_other(module_name.partition(".")[0], folders)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):  # the user's module itself
            places = ", ".join(folders) + (", " if folders else "") + "sys.path"
            raise ValueError(
                f"cannot import {target!r}: no module {error.name!r} in {places}; put "
                f"{module_name.replace('.', '/')}.py beside the study file (a `tuner worker` "
                "on another machine needs it at the same path there, or installed)"
            ) from None
        raise ValueError(f"cannot import {target!r}: {error}") from error
    except Exception as error:  # the user's module raised while it was imported
        raise ValueError(f"cannot import {target!r}: {type(error).__name__}: {error}") from error
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(
            f"cannot import {target!r}: module {module_name!r} ({module.__file__}) has no "
            f"{attribute!r}"
        ) from None


def _forget_other(package: str, folders: Sequence[str]) -> None:
    """Drop an imported module of this name that came from elsewhere than the first of
    `folders` holding one: a worker process that trained another study (a Ray worker is
    reused; both studies may have a train.py) must import this study's module."""
    wanted = next(
        (
            Path(folder)
            for folder in folders
            if (Path(folder) / f"{package}.py").exists() or (Path(folder) / package).is_dir()
        ),
        None,
    )
    loaded = sys.modules.get(package)
    if wanted is None or loaded is None:
        return
    origin = getattr(loaded, "__file__", None)
    if origin is not None and Path(origin).resolve().is_relative_to(wanted):
        return
    for name in [name for name in sys.modules if name == package or name.startswith(f"{package}.")]:
        del sys.modules[name]
    importlib.invalidate_caches()  # the finders' cached listings of those folders may be stale


def kind(target: str, value: Any) -> Kind:
    """Whether `value` is a training function ``(trial)`` or a factory ``(options, context)``.

    Raises:
        ValueError: it is not callable, or takes another number of required parameters.
    """
    try:
        parameters = inspect.signature(value).parameters.values()
    except (TypeError, ValueError):
        raise ValueError(f"{target!r} is not a function: {value!r}") from None
    required = [
        p
        for p in parameters
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if len(required) == 1:
        return "function"
    # A first parameter named trial says a training function with one parameter too many
    # (`train(trial, extra)`), not a factory whose options would arrive as `trial`.
    if len(required) == 2 and required[0].name != "trial":
        return "factory"
    names = ", ".join(p.name for p in required)
    raise ValueError(
        f"{target!r} takes ({names}); a training function takes (trial), "
        "a workload factory (options, context)"
    )
