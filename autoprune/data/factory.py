"""The user's own data: ``dataset: {factory: "module:callable", kwargs: {...}}``.

The factory returns ``(train, test)`` or ``(train, val, test)``: map-style torch Datasets
(``len`` and ``[i]``) of ``(image, label)`` pairs, the image a ``C x H x W`` tensor (uint8
0..255 or float), an ``H x W`` one (one channel), a PIL image or a numpy array, the label
an integer. Every split is read once, whole, into tensors in memory (then on the training
device), and from there everything is as for a registered dataset: the validation split
is carved out of train with the constant seed and stratified (unless the factory gives
one), ``train_subset`` is drawn with the run's seed, normalisation uses the training
split's per-channel mean and std unless the config gives ``mean``/``std``, and
``augment`` names a registered augmentation (``none``, ``crop``, ``crop_flip``).
Classes (the largest label + 1), channels and input size come from the data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from autoprune.data._registry import (
    DataBundle,
    DatasetSpec,
    LoadRequest,
    load_dataset,
    load_request,
)
from autoprune.data._splits import tensor_bundle
from autoprune.errors import UserError

if TYPE_CHECKING:
    from autoprune.config import DatasetConfig

KEY = "dataset.factory"
SPLITS = {2: ("train", "test"), 3: ("train", "val", "test")}


def call_factory(reference: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Call the factory; its splits by name. UserError for anything but 2 or 3 datasets."""
    from autoprune.references import resolve

    factory = resolve(reference, KEY)
    try:
        result = factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's code may raise anything
        text = " ".join(str(exc).split())[:300]
        raise UserError(f"{KEY}: calling {reference}(**{kwargs!r}) failed: "
                        f"{type(exc).__name__}: {text}") from None
    if not isinstance(result, (tuple, list)) or len(result) not in SPLITS:
        raise UserError(f"{KEY}: {reference} returned {_kind(result)}; expected (train, test) "
                        "or (train, val, test) datasets")
    for name, split in zip(SPLITS[len(result)], result, strict=True):
        if not (hasattr(split, "__len__") and hasattr(split, "__getitem__")):
            raise UserError(f"{KEY}: the {name} split of {reference} is {_kind(split)}, not a "
                            "map-style dataset (with len() and [i])")
    return dict(zip(SPLITS[len(result)], result, strict=True))


def materialise(name: str, split: Any, reference: str) -> tuple[Tensor, Tensor]:
    """One split as (N x C x H x W images, int64 labels); UserError naming the first sample
    that is not an (image, int label) pair of the same shape and kind as the first."""
    images: list[Tensor] = []
    labels: list[int] = []
    for i in range(len(split)):
        where = f"{KEY}: {reference} {name}[{i}]"
        item = split[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise UserError(f"{where} is {_kind(item)}; expected an (image, label) pair")
        image, label = _image(item[0], where), _label(item[1], where)
        if images and (image.shape != images[0].shape or image.dtype != images[0].dtype):
            raise UserError(f"{where} is a {_describe(image)} image; {name}[0] is a "
                            f"{_describe(images[0])} one: every image needs the same shape "
                            "and type")
        images.append(image)
        labels.append(label)
    if not images:
        if name == "train":
            raise UserError(f"{KEY}: the train split of {reference} is empty")
        return torch.empty(0), torch.empty(0, dtype=torch.int64)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def _image(value: Any, where: str) -> Tensor:
    if type(value).__module__.startswith("PIL."):
        value = np.asarray(value)
        if value.ndim == 3:  # PIL gives H x W x C
            value = value.transpose(2, 0, 1)
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, Tensor):
        raise UserError(f"{where}: the image is {_kind(value)}; expected a C x H x W tensor, "
                        "a PIL image or a numpy array")
    if value.dim() == 2:
        value = value.unsqueeze(0)
    if value.dim() != 3 or min(value.shape) < 1:
        raise UserError(f"{where}: the image has shape {tuple(value.shape)}; expected "
                        "C x H x W (or H x W)")
    if value.dtype == torch.uint8:
        return value.contiguous()
    if not value.is_floating_point():
        raise UserError(f"{where}: the image is of type {value.dtype}; expected uint8 or float")
    return value.float().contiguous()


def _label(value: Any, where: str) -> int:
    size = value.numel() if isinstance(value, Tensor) else getattr(value, "size", None)
    if isinstance(value, (Tensor, np.ndarray)) and size == 1:
        value = value.item()
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{where}: the label is {value!r}; expected an integer >= 0")
    return value


def _kind(value: Any) -> str:
    return f"a {type(value).__name__}"


def _describe(image: Tensor) -> str:
    return f"{'x'.join(map(str, image.shape))} {str(image.dtype).replace('torch.', '')}"


def load_factory(
    reference: str, kwargs: dict[str, Any], request: LoadRequest, *,
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
    augment: str | None = None,
) -> DataBundle:
    """Call the factory, read its splits into tensors and build the bundle."""
    splits = call_factory(reference, kwargs)
    tensors = {name: materialise(name, split, reference) for name, split in splits.items()}
    train_images = tensors["train"][0]
    channels, height, width = train_images.shape[1:]
    for name, (images, _labels) in tensors.items():
        if images.numel() and (images.shape[1:] != train_images.shape[1:]
                               or images.dtype != train_images.dtype):
            raise UserError(f"{KEY}: {reference}'s {name} images are "
                            f"{_describe(images[0])}, its train images "
                            f"{_describe(train_images[0])}")
    if mean is not None and len(mean) != channels:
        raise UserError(f"dataset.mean has {len(mean)} values; the images have {channels} "
                        "channels")
    classes = 1 + max(int(labels.max()) for _, labels in tensors.values() if labels.numel())
    if request.image_size not in (None, height):
        raise UserError("image_size applies to imagefolder only")
    spec = DatasetSpec(
        reference, classes, int(channels), int(height),
        tuple(mean) if mean is not None else None, tuple(std) if std is not None else None,
        augment=augment or "none",  # type: ignore[arg-type]
        max_value=255.0 if train_images.dtype == torch.uint8 else 1.0,
    )
    bundle = tensor_bundle(spec, request, tensors["train"], tensors["test"], tensors.get("val"))
    if height != width:  # the user's network gets (H, W); registered ones need squares
        bundle = dataclasses.replace(bundle, input_size=(int(height), int(width)))
    return bundle


def load_config_data(config: DatasetConfig, *, seed: int, batch_size: int,
                     device: torch.device | str = "cpu",
                     eval_batch_size: int | None = None) -> DataBundle:
    """The data of a train config's ``dataset`` section: a registered dataset, or the
    user's factory."""
    if config.factory is None:
        return load_dataset(config.name, data_dir=config.data_dir,
                            train_subset=config.train_subset, seed=seed,
                            batch_size=batch_size, device=device, download=config.download,
                            val_fraction=config.val_fraction, eval_batch_size=eval_batch_size)
    request = load_request(train_subset=config.train_subset, seed=seed, batch_size=batch_size,
                           device=device, val_fraction=config.val_fraction,
                           eval_batch_size=eval_batch_size)
    return load_factory(config.factory, dict(config.kwargs), request, mean=config.mean,
                        std=config.std, augment=config.augment)


__all__ = ["call_factory", "load_config_data", "load_factory", "materialise"]
