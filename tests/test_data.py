"""Tests of ``autoprune.data``: splits, determinism, augmentation and each loading path (CPU)."""

from __future__ import annotations

import gzip
import math
import pickle
import socket
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from autoprune.data import BatchSource, DataBundle, list_datasets, load_dataset
from autoprune.data.loaders import random_crop_flip
from autoprune.errors import UserError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any connection attempt, so a test can never download."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def first_batch(source: BatchSource) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(source))


def rows(source: BatchSource) -> Counter[bytes]:
    """Multiset of (image bytes + label) rows stored in a tensor source."""
    images = source.images.reshape(source.num_samples, -1)  # type: ignore[attr-defined]
    labels = source.labels  # type: ignore[attr-defined]
    return Counter(
        img.numpy().tobytes() + bytes([int(y)]) for img, y in zip(images, labels, strict=True)
    )


# --- registry and argument errors -------------------------------------------------------------


def test_list_datasets() -> None:
    expected = ["cifar10", "cifar100", "digits", "fashion_mnist", "imagefolder", "mnist", "svhn"]
    assert list_datasets() == expected


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"name": "cifar1"}, "did you mean 'cifar10'"),
        ({"name": "digits", "train_subset": 100_000}, "train_subset=100000 is larger"),
        ({"name": "digits", "train_subset": 0}, "train_subset"),
        ({"name": "digits", "val_fraction": 1.0}, "val_fraction"),
        ({"name": "digits", "image_size": 32}, "image_size"),
        ({"name": "imagefolder", "data_dir": "/nonexistent/imgs"}, "does not exist"),
        ({"name": "imagefolder"}, "needs data_dir"),
    ],
)
def test_user_errors(kwargs: dict[str, object], fragment: str) -> None:
    name = str(kwargs.pop("name"))
    with pytest.raises(UserError) as info:
        load_dataset(name, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_name_is_normalised() -> None:
    assert load_dataset("Digits").name == "digits"


# --- digits ------------------------------------------------------------------------------------


DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ),
]


@pytest.mark.parametrize("device", DEVICES)
def test_digits_shapes_and_device(device: str) -> None:
    bundle = load_dataset("digits", batch_size=64, device=torch.device(device))
    assert isinstance(bundle, DataBundle)
    assert (bundle.num_classes, bundle.in_channels, bundle.input_size) == (10, 1, 8)
    for source in (bundle.train, bundle.val, bundle.test):
        assert isinstance(source, BatchSource)
        x, y = first_batch(source)
        assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.device.type == device and y.device.type == device
        assert y.min() >= 0 and y.max() < 10
    x, _ = first_batch(bundle.train)
    assert x.shape[0] == 64 and abs(float(x.mean())) < 0.3 and 0.7 < float(x.std()) < 1.3


def test_digits_splits_partition_the_data() -> None:
    bundle = load_dataset("digits")
    parts = [bundle.train, bundle.val, bundle.test]
    assert sum(p.num_samples for p in parts) == 1797
    assert bundle.test.num_samples == pytest.approx(0.2 * 1797, abs=10)
    assert bundle.val.num_samples == pytest.approx(0.1 * (1797 - 360), abs=10)
    union = rows(bundle.train) + rows(bundle.val) + rows(bundle.test)
    full = load_dataset("digits", val_fraction=0.0)
    assert union == rows(full.train) + rows(full.test)  # same multiset: a partition


def test_digits_test_and_val_fixed_across_seeds() -> None:
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(a.test.images, b.test.images)  # type: ignore[attr-defined]
    assert torch.equal(a.val.images, b.val.images)  # type: ignore[attr-defined]
    c = load_dataset("digits", seed=2, train_subset=100)
    assert torch.equal(a.val.images, c.val.images)  # type: ignore[attr-defined]


def test_train_subset_follows_seed() -> None:
    a = load_dataset("digits", seed=0, train_subset=200)
    b = load_dataset("digits", seed=0, train_subset=200)
    c = load_dataset("digits", seed=1, train_subset=200)
    assert a.train.num_samples == 200
    assert torch.equal(a.train.images, b.train.images)  # type: ignore[attr-defined]
    assert not torch.equal(a.train.images, c.train.images)  # type: ignore[attr-defined]
    assert not rows(a.val) & rows(a.train)  # the subset never touches validation samples


def test_set_epoch_is_deterministic() -> None:
    bundle = load_dataset("digits", seed=3)
    bundle.train.set_epoch(5)
    x1, y1 = first_batch(bundle.train)
    bundle.train.set_epoch(5)
    x2, y2 = first_batch(bundle.train)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    resumed = load_dataset("digits", seed=3)
    resumed.train.set_epoch(5)
    assert torch.equal(first_batch(resumed.train)[0], x1)  # a resumed run sees the same batches
    bundle.train.set_epoch(6)
    assert not torch.equal(first_batch(bundle.train)[0], x1)
    # without set_epoch every pass advances the epoch: a fresh order each time
    assert not torch.equal(first_batch(bundle.train)[0], first_batch(bundle.train)[0])


def test_eval_sources_are_ordered_and_lengths_match() -> None:
    bundle = load_dataset("digits", batch_size=50)
    for source, batch in ((bundle.train, 50), (bundle.val, 200), (bundle.test, 200)):
        batches = list(source)
        assert len(source) == len(batches) == math.ceil(source.num_samples / batch)
        assert sum(len(y) for _, y in batches) == source.num_samples
        assert batches[0][0].shape[0] == min(batch, source.num_samples)
    first, second = list(bundle.test), list(bundle.test)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second, strict=True))
    small = load_dataset("digits", eval_batch_size=7).test
    assert len(small) == math.ceil(small.num_samples / 7)


def test_val_fraction_zero_gives_empty_val() -> None:
    bundle = load_dataset("digits", val_fraction=0.0)
    assert bundle.val.num_samples == 0 and len(bundle.val) == 0 and list(bundle.val) == []


# --- fashion-mnist -----------------------------------------------------------------------------


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason=f"{FASHION_DIR} is not installed")
def test_fashion_mnist_from_system_dir() -> None:
    start = time.perf_counter()
    bundle = load_dataset("fashion_mnist", train_subset=1000, batch_size=256)
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0  # ~0.5 s unloaded: mostly gunzip of the 26 MB image file
    assert (bundle.in_channels, bundle.input_size, bundle.num_classes) == (1, 28, 10)
    assert bundle.train.num_samples == 1000
    assert (bundle.val.num_samples, bundle.test.num_samples) == (6000, 10000)
    x, y = first_batch(bundle.train)
    assert x.shape == (256, 1, 28, 28) and y.dtype == torch.int64
    full = load_dataset("fashion_mnist", data_dir=str(FASHION_DIR), val_fraction=0.0)
    assert full.train.num_samples == 60000


# --- augmentation ------------------------------------------------------------------------------


def test_random_crop_flip() -> None:
    x = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    changed = (out != x).flatten(1).any(1)
    assert 0 < int(changed.sum()) <= 64
    assert (out == 0).any()  # zero padding shows up in shifted crops
    again = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_flip_only_and_crop_only() -> None:
    x = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    flipped = random_crop_flip(x, torch.Generator().manual_seed(1), padding=0)
    same = (flipped == x).flatten(1).all(1)
    mirrored = (flipped == x.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and mirrored.any() and same.any()
    cropped = random_crop_flip(x, torch.Generator().manual_seed(1), flip=False)
    assert not torch.equal(cropped, x)


def test_cifar_train_batches_are_augmented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = fake_cifar10(tmp_path, monkeypatch)
    bundle = load_dataset("cifar10", data_dir=str(root), batch_size=1000, val_fraction=0.0)
    x_train, _ = first_batch(bundle.train)
    bundle.train.set_epoch(0)
    assert torch.equal(first_batch(bundle.train)[0], x_train)
    plain = load_dataset("cifar10", data_dir=str(root), batch_size=1000, val_fraction=0.0).train
    plain.augment = None  # type: ignore[attr-defined]
    assert not torch.equal(first_batch(plain)[0], x_train)


# --- torchvision datasets (offline) ------------------------------------------------------------


def test_cifar10_missing_offline(tmp_path: Path, no_network: None) -> None:
    with pytest.raises(UserError) as info:
        load_dataset("cifar10", data_dir=str(tmp_path), download=False)
    message = str(info.value)
    assert "cifar10" in message and str(tmp_path) in message and "\n" not in message


def test_cifar10_failed_download(tmp_path: Path, no_network: None) -> None:
    with pytest.raises(UserError, match="could not be downloaded"):
        load_dataset("cifar10", data_dir=str(tmp_path), download=True)


def fake_cifar10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, per_batch: int = 20) -> Path:
    """Write a tiny CIFAR-10 in torchvision's on-disk format; skip its MD5 checks."""
    import torchvision.datasets.cifar as tv_cifar

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        entry = {
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "labels": [int(v) for v in rng.integers(0, 10, per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(entry))
    meta = {"label_names": [f"class{i}" for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *_args, **_kwargs: True)
    return tmp_path


def test_cifar10_from_fake_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    root = fake_cifar10(tmp_path, monkeypatch)
    bundle = load_dataset("cifar10", data_dir=str(root), batch_size=16, val_fraction=0.2)
    assert (bundle.num_classes, bundle.in_channels, bundle.input_size) == (10, 3, 32)
    assert bundle.train.num_samples + bundle.val.num_samples == 100
    assert bundle.test.num_samples == 20
    x, y = first_batch(bundle.train)
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    test_batch = pickle.loads((root / "cifar-10-batches-py" / "test_batch").read_bytes())
    stored = bundle.test.images  # type: ignore[attr-defined]
    assert stored.dtype == torch.uint8
    assert torch.equal(stored, torch.from_numpy(test_batch["data"].reshape(-1, 3, 32, 32)))
    assert bundle.test.labels.tolist() == test_batch["labels"]  # type: ignore[attr-defined]


# --- imagefolder -------------------------------------------------------------------------------


def fake_imagefolder(root: Path, per_class: int = 3) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_imagefolder(tmp_path: Path) -> None:
    root = fake_imagefolder(tmp_path, per_class=4)
    bundle = load_dataset(
        "imagefolder", data_dir=str(root), image_size=32, batch_size=4, num_workers=0,
        val_fraction=0.25,
    )  # fmt: skip
    assert (bundle.num_classes, bundle.in_channels, bundle.input_size) == (2, 3, 32)
    assert (bundle.train.num_samples, bundle.val.num_samples, bundle.test.num_samples) == (6, 2, 8)
    assert len(bundle.train) == 2 and len(bundle.test) == 1
    for source in (bundle.train, bundle.val, bundle.test):
        for x, y in source:
            assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32
            assert y.dtype == torch.int64 and set(y.tolist()) <= {0, 1}
    bundle.train.set_epoch(2)
    first = first_batch(bundle.train)
    bundle.train.set_epoch(2)
    again = first_batch(bundle.train)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_imagefolder_without_val(tmp_path: Path) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="no val/ or test/"):
        load_dataset("imagefolder", data_dir=str(tmp_path))


# --- IDX (mnist) and SVHN paths with fake files ------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 IDX file, gzipped when ``path`` ends in .gz."""
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def fake_mnist(folder: Path, suffix: str, n_train: int = 50, n_test: int = 20) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10)


@pytest.mark.parametrize("device", DEVICES)
def test_augmented_cifar_on_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    root = fake_cifar10(tmp_path, monkeypatch)
    bundle = load_dataset("cifar10", data_dir=str(root), batch_size=32, device=device)
    x, y = first_batch(bundle.train)
    assert x.device.type == device and y.device.type == device and x.shape == (32, 3, 32, 32)
    assert bundle.train.images.device.type == device  # type: ignore[attr-defined]
    assert bundle.train.images.dtype == torch.uint8  # type: ignore[attr-defined]


@pytest.mark.parametrize(("layout", "suffix"), [("flat", ".gz"), ("torchvision", "")])
def test_mnist_from_idx_files(tmp_path: Path, layout: str, suffix: str, no_network: None) -> None:
    fake_mnist(tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw", suffix)
    bundle = load_dataset("mnist", data_dir=str(tmp_path), batch_size=8, val_fraction=0.2)
    assert (bundle.num_classes, bundle.in_channels, bundle.input_size) == (10, 1, 28)
    assert (bundle.train.num_samples, bundle.val.num_samples, bundle.test.num_samples) == (
        40,
        10,
        20,
    )
    x, y = first_batch(bundle.test)
    assert x.shape == (20, 1, 28, 28) and y.tolist() == [i % 10 for i in range(20)]


def test_mnist_missing_offline(tmp_path: Path, no_network: None) -> None:
    with pytest.raises(UserError, match="dataset 'mnist' is missing"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_svhn_from_fake_mat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    import scipy.io
    import torchvision.datasets.svhn as tv_svhn

    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 10)):
        images = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        labels = (np.arange(n) % 10 + 1).reshape(n, 1)  # SVHN stores digit 0 as label 10
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": images, "y": labels})
    monkeypatch.setattr(tv_svhn, "check_integrity", lambda *_args, **_kwargs: True)
    bundle = load_dataset("svhn", data_dir=str(tmp_path), batch_size=30, val_fraction=0.0)
    assert bundle.train.num_samples == 30 and bundle.test.num_samples == 10
    assert bundle.test.labels.tolist() == [(i + 1) % 10 for i in range(10)]  # type: ignore[attr-defined]
    x, _ = first_batch(bundle.train)
    assert x.shape == (30, 3, 32, 32)
