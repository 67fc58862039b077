"""Datasets as device-resident batch sources: ``load_dataset(name, ...) -> DataBundle``.

Every dataset yields ``(x, y)`` batches already on the training device, with train/val/test
splits that are reproducible: val and the digits test set use constant seeds, ``train_subset``
and the per-epoch shuffling/augmentation follow the run's ``seed`` (see ``BatchSource.set_epoch``).
"""

from __future__ import annotations

from autoprune.data import datasets as _datasets  # noqa: F401 - registers the datasets
from autoprune.data._registry import (
    DataBundle,
    DatasetSpec,
    list_datasets,
    load_dataset,
    register_dataset,
)
from autoprune.data.factory import load_config_data
from autoprune.data.loaders import BatchSource

__all__ = [
    "BatchSource",
    "DataBundle",
    "DatasetSpec",
    "list_datasets",
    "load_config_data",
    "load_dataset",
    "register_dataset",
]
