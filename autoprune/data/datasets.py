"""The dataset table and one loader function per family (sklearn digits, IDX, torchvision).

Adding a dataset: add its :class:`DatasetSpec` row to ``SPECS`` and register the loader of its
family (or a new function) with ``@register_dataset(SPECS[name])``.

torchvision and sklearn are imported lazily, inside the loaders that need them: each costs about
a second to import and the default dataset (digits) needs neither.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from autoprune.data._idx import find_idx_dir, read_idx_split
from autoprune.data._imagefolder import load_imagefolder
from autoprune.data._registry import DataBundle, DatasetSpec, LoadRequest, register_dataset
from autoprune.data._splits import stratified_split, take, tensor_bundle
from autoprune.errors import UserError

SPECS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("digits", 10, 1, 8, None, None, max_value=16.0),
        DatasetSpec(
            "mnist", 10, 1, 28, (0.1307,), (0.3081,),
            default_dir="/usr/share/datasets/mnist", torchvision_name="MNIST",
        ),
        DatasetSpec(
            "fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,),
            default_dir="/usr/share/datasets/fashion-mnist", torchvision_name="FashionMNIST",
        ),
        DatasetSpec(
            "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
            augment="crop_flip", torchvision_name="CIFAR10",
        ),
        DatasetSpec(
            "cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
            augment="crop_flip", torchvision_name="CIFAR100",
        ),
        DatasetSpec(
            "svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
            augment="crop", torchvision_name="SVHN",
        ),
        DatasetSpec(
            "imagefolder", 0, 3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
            augment="crop_flip",  # RandomResizedCrop + flip, done per sample by torchvision
        ),
    )
}  # fmt: skip

DIGITS_TEST_SEED = 0x5EED_0002  # constant: the digits test hold-out never changes
DIGITS_TEST_FRACTION = 0.2

register_dataset(SPECS["imagefolder"])(load_imagefolder)


def default_data_dir() -> Path:
    """Download/cache folder when no ``data_dir`` is given: ``$AUTOPRUNE_DATA_DIR`` or
    ``~/.cache/autoprune/data``."""
    env = os.environ.get("AUTOPRUNE_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autoprune" / "data"


def missing_data(name: str, where: str, download: bool) -> UserError:
    """The one-line error for data that is neither on disk nor downloadable."""
    fix = "pass data_dir pointing at the files, or download=True on a connected machine"
    if download:
        return UserError(
            f"dataset {name!r} is not in {where} and could not be downloaded (no network?): {fix}"
        )
    return UserError(
        f"dataset {name!r} is missing or incomplete in {where} (download=False): {fix}"
    )


@register_dataset(SPECS["digits"])
def _load_digits(spec: DatasetSpec, request: LoadRequest) -> DataBundle:
    """sklearn's bundled 8x8 digits; test = a fixed stratified 20% hold-out (no official split)."""
    table = _digits_table()
    images = torch.from_numpy(np.ascontiguousarray(table[:, :64])).view(-1, 1, 8, 8)
    labels = torch.from_numpy(table[:, 64].astype(np.int64))
    train_idx, test_idx = stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    train, test = take(images, labels, train_idx), take(images, labels, test_idx)
    return tensor_bundle(spec, request, train, test)


def _digits_table() -> np.ndarray:
    """The digits as a (1797, 65) uint8 table: 64 pixels (0..16) then the label.

    Reads sklearn's bundled CSV directly (milliseconds) instead of importing sklearn (~0.8 s);
    falls back to ``load_digits()`` if the file has moved.
    """
    spec = importlib.util.find_spec("sklearn")
    locations = spec.submodule_search_locations if spec is not None else None
    if locations:
        path = Path(next(iter(locations))) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return np.loadtxt(path, delimiter=",", dtype=np.uint8)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.column_stack([digits.data, digits.target]).astype(np.uint8)


@register_dataset(SPECS["mnist"], SPECS["fashion_mnist"])
def _load_idx(spec: DatasetSpec, request: LoadRequest) -> DataBundle:
    """MNIST-format datasets from IDX files (gz or not): flat in a folder or torchvision layout."""
    assert spec.torchvision_name is not None
    cache = default_data_dir()
    if request.data_dir is not None:
        roots = [request.data_dir]
    else:
        roots = [Path(spec.default_dir), cache] if spec.default_dir else [cache]
    folder = find_idx_dir(roots, spec.torchvision_name)
    if folder is None and request.download:
        _torchvision_dataset(spec, roots[-1], train=True, download=True)
        _torchvision_dataset(spec, roots[-1], train=False, download=True)
        folder = find_idx_dir(roots[-1:], spec.torchvision_name)
    if folder is None:
        raise missing_data(spec.name, " or ".join(map(str, roots)), request.download)
    train, test = read_idx_split(folder, train=True), read_idx_split(folder, train=False)
    return tensor_bundle(spec, request, train, test)


@register_dataset(SPECS["cifar10"], SPECS["cifar100"], SPECS["svhn"])
def _load_torchvision(spec: DatasetSpec, request: LoadRequest) -> DataBundle:
    """CIFAR-10/100 and SVHN via torchvision, converted once to uint8 NCHW tensors."""
    root = request.data_dir if request.data_dir is not None else default_data_dir()
    train = _torchvision_tensors(spec, root, train=True, download=request.download)
    test = _torchvision_tensors(spec, root, train=False, download=request.download)
    return tensor_bundle(spec, request, train, test)


def _torchvision_tensors(
    spec: DatasetSpec, root: Path, *, train: bool, download: bool
) -> tuple[Tensor, Tensor]:
    """One split of a torchvision dataset as (uint8 NCHW images, int64 labels)."""
    dataset = _torchvision_dataset(spec, root, train=train, download=download)
    data = np.asarray(dataset.data, dtype=np.uint8)
    if data.ndim == 4 and data.shape[-1] == spec.in_channels:  # CIFAR stores NHWC
        data = data.transpose(0, 3, 1, 2)
    labels = getattr(dataset, "targets", None)
    if labels is None:
        labels = dataset.labels  # SVHN
    images = torch.from_numpy(np.ascontiguousarray(data))
    return images, torch.as_tensor(np.asarray(labels), dtype=torch.int64)


def _torchvision_dataset(spec: DatasetSpec, root: Path, *, train: bool, download: bool) -> Any:
    """The torchvision dataset of ``spec`` (``.data`` + ``.targets`` or ``.labels``); any failure
    becomes one ``UserError``."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, str(spec.torchvision_name))
    split = {"split": "train" if train else "test"} if spec.name == "svhn" else {"train": train}
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # torchvision prints download progress
            return cls(str(root), download=download, **split)
    except Exception:  # noqa: BLE001 - network, integrity and format errors all mean "no data"
        raise missing_data(spec.name, str(root), download) from None
