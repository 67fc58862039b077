"""Train/val/test splitting and the assembly of tensor-backed bundles.

Held-out sets (validation, the digits test set) use CONSTANT seeds, so every run and every trial
of a search evaluates on the same samples; only the ``train_subset`` draw follows the run's seed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from autoprune.data._registry import DataBundle, DatasetSpec, LoadRequest
from autoprune.data.loaders import (
    Augmentation,
    Normalizer,
    TensorBatchSource,
    random_crop,
    random_crop_flip,
)
from autoprune.errors import UserError

VAL_SEED = 0x5EED_0001  # constant: the validation samples never change
_AUGMENTATIONS: dict[str, Augmentation | None] = {
    "none": None,
    "crop": random_crop,
    "crop_flip": random_crop_flip,
}


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices into ``(kept, held)``; ``held`` has ``round(fraction * n)`` of each class.

    Both index tensors are sorted. Deterministic for a given ``seed``.
    """
    n = int(labels.numel())
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=generator)
    order = perm[torch.sort(labels[perm], stable=True).indices]  # grouped by class, random within
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts.repeat_interleave(counts)
    held = rank < torch.round(counts * fraction).long().repeat_interleave(counts)
    return order[~held].sort().values, order[held].sort().values


def draw_subset(indices: Tensor, size: int | None, seed: int, dataset: str) -> Tensor:
    """Keep ``size`` of ``indices`` drawn with the run's ``seed`` (all of them when None)."""
    if size is None:
        return indices
    available = int(indices.numel())
    if size > available:
        raise UserError(
            f"train_subset={size} is larger than the {available} training samples of "
            f"{dataset!r} left after the validation split"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(available, generator=generator)[:size]
    return indices[chosen.sort().values]


def train_val_indices(labels: Tensor, request: LoadRequest, dataset: str) -> tuple[Tensor, Tensor]:
    """Indices of the training split kept for fitting and for validation."""
    fit, val = stratified_split(labels, request.val_fraction, VAL_SEED)
    return draw_subset(fit, request.train_subset, request.seed, dataset), val


def take(images: Tensor, labels: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Rows ``indices`` of both tensors (``index_select``: far faster than ``x[idx]`` on CPU)."""
    return images.index_select(0, indices), labels.index_select(0, indices)


def channel_stats(images: Tensor, max_value: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of NCHW ``images`` in [0, 1] units (chunked: little memory)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in torch.split(images, 4096):
        x = chunk.to(torch.float64).div_(max_value)
        total += x.sum((0, 2, 3))
        squares += x.square().sum((0, 2, 3))
    count = images.numel() // images.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def tensor_bundle(
    spec: DatasetSpec,
    request: LoadRequest,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor] | None = None,
) -> DataBundle:
    """Build a bundle from uint8 NCHW images + int64 labels of the official train/test splits
    (float images work too, with ``spec.max_value`` their value of 1.0). Validation is carved
    out of ``train`` (:func:`train_val_indices`) unless ``val`` is given."""
    if request.image_size not in (None, spec.input_size):
        raise UserError(
            f"image_size applies to imagefolder only; {spec.name!r} images are "
            f"{spec.input_size}x{spec.input_size}"
        )
    images, labels = train
    if val is None:
        fit_idx, val_idx = train_val_indices(labels, request, spec.name)
    else:
        every = torch.arange(labels.numel())
        fit_idx = draw_subset(every, request.train_subset, request.seed, spec.name)
    if spec.mean is None or spec.std is None:
        mean, std = channel_stats(images, spec.max_value)
    else:
        mean, std = spec.mean, spec.std
    normalizer = Normalizer(mean, std, spec.max_value, request.device)

    def source(x: Tensor, y: Tensor, train_split: bool) -> TensorBatchSource:
        return TensorBatchSource(
            x.to(request.device),
            y.to(request.device),
            batch_size=request.batch_size if train_split else request.eval_batch_size,
            normalizer=normalizer,
            shuffle=train_split,
            augment=_AUGMENTATIONS[spec.augment] if train_split else None,
            seed=request.seed,
        )

    return DataBundle(
        name=spec.name,
        num_classes=spec.num_classes,
        in_channels=spec.in_channels,
        input_size=spec.input_size,
        train=source(*take(images, labels, fit_idx), True),
        val=source(*(take(images, labels, val_idx) if val is None else val), False),
        test=source(test[0], test[1], False),
    )
