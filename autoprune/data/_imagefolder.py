"""``imagefolder``: ImageNet-style ``train/`` + ``val/`` (or ``test/``) folders of class folders.

Files are decoded per sample by a ``DataLoader`` (too big to hold in memory); transforms yield
uint8 tensors, normalisation happens on the training device. Each sample's random transform is
seeded from the sampler's ``(seed, epoch)`` stream, so passes are reproducible with any number of
workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from autoprune.data._registry import DataBundle, DatasetSpec, LoadRequest
from autoprune.data._splits import train_val_indices
from autoprune.data.loaders import LoaderBatchSource, Normalizer, SeededSampler
from autoprune.errors import UserError

Transform = Callable[[Any], Tensor]
EVAL_CROP_RATIO = 0.875  # resize to size / 0.875, then center-crop size (224 <- 256)


class _ImageList(Dataset[tuple[Tensor, int]]):
    """``(path, label)`` samples decoded with PIL; keys are ``(index, seed)`` from the sampler."""

    def __init__(self, samples: list[tuple[str, int]], transform: Transform) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int]:
        from torchvision.datasets.folder import default_loader

        index, seed = key
        path, label = self.samples[index]
        image = default_loader(path)
        with torch.random.fork_rng(devices=[]):  # the transform's randomness depends on seed only
            torch.manual_seed(seed)
            return self.transform(image), label


def load_imagefolder(spec: DatasetSpec, request: LoadRequest) -> DataBundle:
    """Train/val/test sources over ``data_dir/train`` and ``data_dir/{test,val}``."""
    root = _root(request.data_dir)
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if test_dir is None:
        raise UserError(f"imagefolder {root} has no val/ or test/ subfolder")
    classes, train_samples = _scan(root / "train")
    test_classes, test_samples = _scan(test_dir)
    if test_classes != classes:
        raise UserError(f"class folders of {test_dir} differ from those of {root / 'train'}")
    labels = torch.tensor([label for _, label in train_samples], dtype=torch.int64)
    fit_idx, val_idx = train_val_indices(labels, request, spec.name)
    size = request.image_size or spec.input_size
    train_tf, eval_tf = _transforms(size)
    assert spec.mean is not None and spec.std is not None
    normalizer = Normalizer(spec.mean, spec.std, 255.0, request.device)
    workers = _workers(request.num_workers)

    def source(samples: list[tuple[str, int]], indices: Tensor, train: bool) -> LoaderBatchSource:
        sampler = SeededSampler(indices, shuffle=train, seed=request.seed)
        loader = DataLoader(
            _ImageList(samples, train_tf if train else eval_tf),
            batch_size=request.batch_size if train else request.eval_batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=request.device.type == "cuda",
            persistent_workers=workers > 0,
        )
        return LoaderBatchSource(loader, sampler, normalizer, request.device)

    return DataBundle(
        name=spec.name,
        num_classes=len(classes),
        in_channels=spec.in_channels,
        input_size=size,
        train=source(train_samples, fit_idx, True),
        val=source(train_samples, val_idx, False),
        test=source(test_samples, torch.arange(len(test_samples)), False),
    )


def _root(data_dir: Path | None) -> Path:
    if data_dir is None:
        raise UserError("dataset 'imagefolder' needs data_dir (a folder with train/ and val/)")
    if not data_dir.is_dir():
        raise UserError(f"imagefolder path {data_dir} does not exist or is not a folder")
    if not (data_dir / "train").is_dir():
        raise UserError(f"imagefolder {data_dir} has no train/ subfolder")
    return data_dir


def _scan(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and ``(path, label)`` samples of one ImageFolder-layout folder."""
    from torchvision.datasets import ImageFolder

    try:
        found = ImageFolder(str(folder))
    except (FileNotFoundError, OSError) as exc:
        raise UserError(f"imagefolder {folder}: {exc}".splitlines()[0]) from None
    return list(found.classes), list(found.samples)


def _transforms(size: int) -> tuple[Transform, Transform]:
    """Train (RandomResizedCrop + flip) and eval (Resize + CenterCrop) transforms to uint8."""
    from torchvision import transforms as T

    train = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.PILToTensor()])
    resize = round(size / EVAL_CROP_RATIO)
    evaluate = T.Compose([T.Resize(resize), T.CenterCrop(size), T.PILToTensor()])
    return train, evaluate


def _workers(requested: int | None) -> int:
    """Decoding worker processes: as asked, else one per core minus one (at most 8)."""
    if requested is not None:
        return requested
    return max(0, min(8, (os.cpu_count() or 1) - 1))
