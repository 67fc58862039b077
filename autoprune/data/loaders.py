"""Batch sources (what the trainer iterates) and vectorised tensor augmentation.

Two implementations of :class:`BatchSource`:

* :class:`TensorBatchSource` - the whole split is a uint8 tensor on the training device; a batch
  is an index slice, augmented and normalised on the device. No DataLoader, no workers.
* :class:`LoaderBatchSource` - wraps a ``DataLoader`` (file-backed datasets such as ImageNet)
  whose sampler is a :class:`SeededSampler`; batches are moved to the device and normalised there.

Both derive every random number of a pass from ``(seed, epoch)``, so a resumed run that calls
``set_epoch(epoch)`` sees exactly the batches of the original run.

On N data-parallel workers (:mod:`autoprune.engine.parallel`) each source is *sharded*
(:meth:`TensorBatchSource.shard`): every worker draws the same global order, and takes its
part of each global batch (training) or its contiguous part of the split (evaluation). See
:func:`shard_positions`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

Batch = tuple[Tensor, Tensor]
Augmentation = Callable[[Tensor, torch.Generator], Tensor]


@runtime_checkable
class BatchSource(Protocol):
    """An iterable of ``(x, y)`` batches on the training device (x float32 normalised, y int64)."""

    num_samples: int

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


def mix_seed(*parts: int) -> int:
    """A well-spread 63-bit seed from integers (e.g. ``(seed, epoch)``); stable across runs."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """CPU generator for one pass: same ``(seed, epoch)`` -> same shuffling and augmentation."""
    return torch.Generator().manual_seed(mix_seed(seed, epoch))


class Normalizer:
    """``(x / max_value - mean) / std`` per channel, as one fused multiply-add on the device."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        max_value: float,
        device: torch.device,
    ) -> None:
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = (1.0 / (max_value * std_t)).to(device)
        self.shift = (-mean_t / std_t).to(device)

    def __call__(self, x: Tensor) -> Tensor:
        # float32 input (a dataset factory's): copy, never normalise the stored split in place
        x = x.to(torch.float32, copy=x.dtype == torch.float32)
        return x.mul_(self.scale).add_(self.shift)


def random_crop_flip(
    x: Tensor, generator: torch.Generator, padding: int = 4, flip: bool = True
) -> Tensor:
    """Random crop of the original size from the zero-padded batch, then random horizontal flip.

    Vectorised over the batch (one gather, any dtype, on ``x``'s device); the random numbers
    come from the CPU ``generator`` so results do not depend on the device.
    """
    b, c, h, w = x.shape
    if b == 0:
        return x
    padded = F.pad(x, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator)
    rows = top + torch.arange(h)
    cols = left + torch.arange(w)
    if flip:
        flipped = torch.rand(b, 1, generator=generator) < 0.5
        cols = torch.where(flipped, left + (w - 1) - torch.arange(w), cols)
    # flat source position of every output pixel in the padded image; gather beats fancy indexing
    source = rows.unsqueeze(2) * (w + 2 * padding) + cols.unsqueeze(1)
    source = source.view(b, 1, h * w).to(x.device).expand(b, c, h * w)
    return padded.view(b, c, -1).gather(2, source).view(b, c, h, w)


def random_crop(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random crop with 4-pixel zero padding and no flip (digits-like data such as SVHN)."""
    return random_crop_flip(x, generator, flip=False)


def shard_positions(n: int, batch: int, rank: int, world: int, train: bool) -> Tensor:
    """Positions (into a pass's order of ``n`` samples) that worker ``rank`` of ``world`` takes.

    Training: every global batch of ``batch`` samples is split into ``world`` consecutive
    parts (``batch`` is a multiple of ``world``, so ``batch // world`` each); a short last
    batch is split as evenly as it goes (sizes differ by at most one), and dropped by every
    worker when it has fewer samples than there are workers, so that all workers take the
    same number of steps. Evaluation: one contiguous part of the split each, nothing dropped
    (the workers' sums add up to the whole split)."""
    if world == 1:
        return torch.arange(n)
    if not train:
        return torch.arange(rank * n // world, (rank + 1) * n // world)
    parts = []
    for start in range(0, n, batch):
        m = min(batch, n - start)
        if m < world:
            break
        parts.append(torch.arange(start + rank * m // world, start + (rank + 1) * m // world))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


class _Shard:
    """Which part of every pass this source yields (the whole of it on one worker)."""

    rank, world, train = 0, 1, True

    def shard(self, rank: int, world: int, train: bool) -> None:
        """Yield only worker ``rank``'s part of every pass (:func:`shard_positions`)."""
        self.rank, self.world, self.train = int(rank), int(world), bool(train)

    @property
    def rank_batch(self) -> int:
        """Samples per full batch on this worker."""
        return self.global_batch // self.world if self.train else self.global_batch

    global_batch = 1


class _EpochCounter:
    """Epoch bookkeeping shared by the sources: each pass uses the current epoch, then advances.

    So a trainer that never calls ``set_epoch`` still gets a fresh order every pass, and one that
    calls ``set_epoch(e)`` before pass ``e`` gets the batches of ``(seed, e)``.
    """

    def __init__(self) -> None:
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass use ``epoch`` (deterministic shuffling/augmentation)."""
        self._epoch = int(epoch)

    def _take_epoch(self) -> int:
        epoch = self._epoch
        self._epoch += 1
        return epoch


class TensorBatchSource(_EpochCounter, _Shard):
    """Batches sliced from device-resident tensors; shuffled and augmented per ``(seed, epoch)``.
    Sharded, a worker's augmentation draws come from ``(seed, rank, epoch)``."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        normalizer: Normalizer,
        shuffle: bool = False,
        augment: Augmentation | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.normalizer = normalizer
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.num_samples = int(labels.shape[0])
        self.global_batch = batch_size

    def __len__(self) -> int:
        n = self.num_samples if self.world == 1 else len(self._positions())
        return (n + self.rank_batch - 1) // self.rank_batch

    def _positions(self) -> Tensor:
        return shard_positions(self.num_samples, self.batch_size, self.rank, self.world,
                               self.train)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self._take_epoch()
        generator = epoch_generator(self.seed, epoch)
        order = None
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=generator).to(self.images.device)
        if self.world > 1:  # this worker's part; its own augmentation stream
            mine = self._positions().to(self.images.device)
            order = mine if order is None else order.index_select(0, mine)
            generator = epoch_generator(mix_seed(self.seed, self.rank), epoch)
        count = self.num_samples if order is None else int(order.numel())
        for start in range(0, count, self.rank_batch):
            stop = start + self.rank_batch
            if order is None:
                x, y = self.images[start:stop], self.labels[start:stop]
            else:
                idx = order[start:stop]  # index_select: ~100x faster than x[idx] on CPU
                x, y = self.images.index_select(0, idx), self.labels.index_select(0, idx)
            if self.augment is not None:
                x = self.augment(x, generator)
            yield self.normalizer(x), y


class SeededSampler(Sampler[tuple[int, int]], _EpochCounter, _Shard):
    """Yields ``(index, sample_seed)`` keys: the order and each sample's augmentation seed follow
    ``(seed, epoch)``. Runs in the main process, so it works with persistent workers."""

    def __init__(self, indices: Tensor, *, shuffle: bool, seed: int) -> None:
        _EpochCounter.__init__(self)
        self.global_batch = 1
        self.indices = indices
        self.shuffle = shuffle
        self.seed = seed

    def __len__(self) -> int:
        n = int(self.indices.numel())
        if self.world == 1:
            return n
        return int(shard_positions(n, self.global_batch, self.rank, self.world,
                                   self.train).numel())

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = epoch_generator(self.seed, self._take_epoch())
        n = int(self.indices.numel())
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        seeds = torch.randint(0, 2**62, (n,), generator=generator)  # per sample: any worker
        if self.world > 1:
            mine = shard_positions(n, self.global_batch, self.rank, self.world, self.train)
            order, seeds = order[mine], seeds[mine]
        yield from zip(self.indices[order].tolist(), seeds.tolist(), strict=True)


class LoaderBatchSource:
    """A ``DataLoader`` of uint8 images as a :class:`BatchSource`: device move + normalisation."""

    def __init__(
        self,
        loader: DataLoader[tuple[Tensor, int]],
        sampler: SeededSampler,
        normalizer: Normalizer,
        device: torch.device,
    ) -> None:
        self.loader = loader
        self.sampler = sampler
        self.normalizer = normalizer
        self.device = device
        self.num_samples = len(sampler)
        self.sampler.global_batch = int(loader.batch_size or 1)

    def __len__(self) -> int:
        return len(self.loader) if self.num_samples else 0

    def shard(self, rank: int, world: int, train: bool) -> None:
        """Yield only worker ``rank``'s part of every pass (:func:`shard_positions`): the
        sampler yields that part, and the loader batches it ``batch // world`` at a time."""
        self.sampler.shard(rank, world, train)
        old = self.loader
        self.loader = DataLoader(
            old.dataset, batch_size=self.sampler.rank_batch, sampler=self.sampler,
            num_workers=old.num_workers, pin_memory=old.pin_memory,
            persistent_workers=old.persistent_workers,
        )

    def set_epoch(self, epoch: int) -> None:
        """Reseed the sampler (order and per-sample augmentation) for the next pass."""
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Batch]:
        if self.num_samples == 0:
            return
        for images, labels in self.loader:
            x = self.normalizer(images.to(self.device, non_blocking=True))
            yield x, labels.to(self.device, non_blocking=True)
