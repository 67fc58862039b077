"""Dataset registry: metadata records, the ``register_dataset`` decorator and ``load_dataset``.

A dataset is one :class:`DatasetSpec` (its metadata, kept in the table in ``datasets.py``) plus
the loader function of its family, registered with ``@register_dataset(spec, ...)``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from autoprune.data.loaders import BatchSource
from autoprune.errors import UserError

Augment = Literal["none", "crop", "crop_flip"]


@dataclass(frozen=True)
class DatasetSpec:
    """Static metadata of one dataset; one row of the table in ``datasets.py``."""

    name: str
    num_classes: int  # 0: discovered when loading (imagefolder)
    in_channels: int
    input_size: int  # square side; the default for imagefolder
    mean: tuple[float, ...] | None  # per channel, [0, 1] units; None: computed from train split
    std: tuple[float, ...] | None
    augment: Augment = "none"  # train-time augmentation: crop = random crop with 4-pixel padding
    max_value: float = 255.0  # raw pixel value that maps to 1.0
    default_dir: str | None = None  # where the files live when no data_dir is given
    torchvision_name: str | None = None  # torchvision class used to read/download the files


@dataclass(frozen=True)
class DataBundle:
    """Everything a training run needs from a dataset: shapes and the three batch sources."""

    name: str
    num_classes: int
    in_channels: int
    input_size: int | tuple[int, int]
    """Square side; ``(height, width)`` for non-square images of a dataset factory."""
    train: BatchSource
    val: BatchSource
    test: BatchSource


@dataclass(frozen=True)
class LoadRequest:
    """The caller's options of :func:`load_dataset`, validated."""

    data_dir: Path | None
    train_subset: int | None
    seed: int
    batch_size: int
    eval_batch_size: int
    device: torch.device
    download: bool
    val_fraction: float
    image_size: int | None
    num_workers: int | None


Loader = Callable[[DatasetSpec, LoadRequest], DataBundle]

_REGISTRY: dict[str, tuple[DatasetSpec, Loader]] = {}


def register_dataset(*specs: DatasetSpec) -> Callable[[Loader], Loader]:
    """Register ``loader`` as the loading function of each dataset in ``specs``."""

    def decorate(loader: Loader) -> Loader:
        for spec in specs:
            if spec.name in _REGISTRY:
                raise ValueError(f"dataset {spec.name!r} is registered twice")
            _REGISTRY[spec.name] = (spec, loader)
        return loader

    return decorate


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(_REGISTRY)


def get_dataset(name: str) -> tuple[DatasetSpec, Loader]:
    """Look ``name`` up (case and ``-``/``_`` insensitive); unknown names suggest close ones."""
    key = name.strip().lower().replace("-", "_")
    if key in _REGISTRY:
        return _REGISTRY[key]
    close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise UserError(f"unknown dataset {name!r}: {hint}known: {', '.join(list_datasets())}")


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    train_subset: int | None = None,
    seed: int = 0,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    download: bool = False,
    val_fraction: float = 0.1,
    eval_batch_size: int | None = None,
    image_size: int | None = None,
    num_workers: int | None = None,
) -> DataBundle:
    """Load dataset ``name`` with train/val/test batch sources on ``device``.

    ``val_fraction`` of the training split becomes the validation set (constant seed: the same
    samples for every run); ``train_subset`` samples of the rest are kept, drawn with ``seed``.
    ``image_size`` and ``num_workers`` apply to ``imagefolder`` only.
    """
    spec, loader = get_dataset(name)
    request = load_request(
        data_dir=data_dir, train_subset=train_subset, seed=seed, batch_size=batch_size,
        device=device, download=download, val_fraction=val_fraction,
        eval_batch_size=eval_batch_size, image_size=image_size, num_workers=num_workers,
    )
    return loader(spec, request)


def load_request(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    train_subset: int | None = None,
    seed: int = 0,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    download: bool = False,
    val_fraction: float = 0.1,
    eval_batch_size: int | None = None,
    image_size: int | None = None,
    num_workers: int | None = None,
) -> LoadRequest:
    """The options of :func:`load_dataset`, validated (UserError naming a bad one)."""
    return LoadRequest(
        data_dir=Path(data_dir).expanduser() if data_dir is not None else None,
        train_subset=_optional_positive("train_subset", train_subset),
        seed=int(seed),
        batch_size=_positive("batch_size", batch_size),
        eval_batch_size=_positive("eval_batch_size", eval_batch_size or 4 * batch_size),
        device=_device(device),
        download=bool(download),
        val_fraction=_fraction(val_fraction),
        image_size=_optional_positive("image_size", image_size),
        num_workers=None if num_workers is None else _non_negative("num_workers", num_workers),
    )


def _positive(key: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{key} must be a positive integer, got {value!r}")
    return value


def _optional_positive(key: str, value: int | None) -> int | None:
    return None if value is None else _positive(key, value)


def _non_negative(key: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{key} must be a non-negative integer, got {value!r}")
    return value


def _fraction(value: float) -> float:
    if not 0.0 <= float(value) < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {value!r}")
    return float(value)


def _device(device: torch.device | str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"invalid device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {str(dev)!r} requested but CUDA is not available")
    return dev
