"""Reader of the IDX files of MNIST-like datasets (``train-images-idx3-ubyte[.gz]`` etc.)."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from autoprune.errors import UserError

_STEMS = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists (the raw file first)."""
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def find_idx_dir(roots: Sequence[Path], torchvision_folder: str) -> Path | None:
    """First folder holding all four IDX files: each root itself, then its torchvision layout
    ``root/<torchvision_folder>/raw``."""
    stems = _STEMS[True] + _STEMS[False]
    for root in roots:
        for folder in (root, root / torchvision_folder / "raw"):
            if all(idx_file(folder, stem) for stem in stems):
                return folder
    return None


def read_idx(path: Path) -> np.ndarray:
    """Decode one uint8 IDX file (optionally gzipped) into an array of its declared shape."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise UserError(f"{path} is not a valid gzip file ({exc})") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise UserError(f"{path} is not a uint8 IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    data = np.frombuffer(bytearray(raw), dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated: {data.size} values for shape {shape}")
    return data.reshape(shape)


def read_idx_split(folder: Path, *, train: bool) -> tuple[Tensor, Tensor]:
    """(uint8 N x 1 x H x W images, int64 labels) of the train or test split in ``folder``."""
    image_stem, label_stem = _STEMS[train]
    images = read_idx(_require(folder, image_stem))
    labels = read_idx(_require(folder, label_stem))
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise UserError(
            f"IDX files in {folder} disagree: images {images.shape}, labels {labels.shape}"
        )
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).to(torch.int64)


def _require(folder: Path, stem: str) -> Path:
    path = idx_file(folder, stem)
    if path is None:
        raise UserError(f"{folder} has no {stem} (or {stem}.gz)")
    return path
