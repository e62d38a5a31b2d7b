"""The user's code travels to a Ray cluster: the study file's folder, shipped with Ray's own
runtime environment (its ``working_dir``), so that a node needs tuner installed but not the
user's code.

Without a cluster nothing travels: a local Ray and ``tuner worker`` import the code from the
folders the spec names (tuner.workloads.user), which must then exist at the same path.

What is shipped is the folder the study file is in, with the ``[workload] search_path`` folders
inside it, less `SHIP_EXCLUDES` (and what its ``.gitignore`` leaves out, as Ray does): a folder
of more than `SHIP_LIMIT_BYTES` is refused before the study starts. A search-path folder
outside it is not shipped and must be at the same path on every node. On the worker, the
folders are read from where Ray unpacked them (`remap`).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path

from tuner.errors import SpecError
from tuner.spec import StudySpec

#: Never shipped: version control, caches, environments, databases, checkpoints and tuner's
#: artifacts (gitignore-style patterns, matched against every path component, as Ray does).
SHIP_EXCLUDES = (
    ".git",
    "__pycache__",
    "*.pyc",
    ".venv",
    "venv",
    "node_modules",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    "artifacts",
    "*.db",
    "*.db-wal",
    "*.db-shm",
    "*.pt",
    "*.ckpt",
)
#: The most a study's code may weigh: Ray keeps it in its GCS (whose own limit is 512 MiB),
#: and every node downloads it. Data belongs on the nodes (or shared storage), not here.
SHIP_LIMIT_BYTES = 100 * 2**20


def code_folder(spec: StudySpec, cwd: Path | None = None) -> Path | None:
    """The folder to ship for the spec's user code (the study file's), or None: a built-in
    workload needs none. The spec's search path ends with the study file's folder then the
    working directory `cwd` (tuner.workloads.user.search_path); the latter is not shipped."""
    workload = spec.workload
    if not workload.command and ":" not in workload.name:
        return None
    folders = [Path(folder) for folder in workload.search_path]
    here = (cwd or Path.cwd()).resolve()
    if len(folders) > 1 and folders[-1] == here:
        folders = folders[:-1]
    return folders[-1] if folders and folders[-1].is_dir() else None


def _excluded(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in SHIP_EXCLUDES)


def shipped_size(folder: Path) -> int:
    """The bytes of `folder` that would be shipped (an upper bound: a ``.gitignore`` may
    leave out more)."""
    total = 0
    for root, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if not _excluded(name)]
        for name in files:
            if not _excluded(name):
                total += os.stat(os.path.join(root, name), follow_symlinks=False).st_size
    return total


def check_shippable(spec: StudySpec) -> Path | None:
    """The folder that will travel (see code_folder), checked before the study starts.

    Raises:
        SpecError: the folder is larger than SHIP_LIMIT_BYTES.
    """
    folder = code_folder(spec)
    if folder is None:
        return None
    size = shipped_size(folder)
    if size > SHIP_LIMIT_BYTES:
        raise SpecError(
            f"{folder}: {size / 2**20:.0f} MiB of files would be shipped to the cluster with "
            f"the study's code (at most {SHIP_LIMIT_BYTES // 2**20} MiB): move data and "
            "models out of the study file's folder (nodes read data from their own disks), "
            "or list them in its .gitignore"
        )
    return folder


def remap(search_path: Sequence[str], shipped: str, here: str) -> list[str]:
    """The search path on a worker whose working directory `here` is the shipped folder
    `shipped` as Ray unpacked it: folders inside it are read from there, others as given."""
    remapped = []
    for folder in search_path:
        path = Path(folder)
        if path == Path(shipped) or Path(shipped) in path.parents:
            remapped.append(str(Path(here) / path.relative_to(shipped)))
        else:
            remapped.append(folder)
    return remapped
