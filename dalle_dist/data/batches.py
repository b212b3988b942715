"""Where a training loop's batches come from: the ``BatchSource`` protocol, and its implementation for
map-style datasets (shards have theirs in ``shards.py``).

A dataset hands out its batch source (``dataset.batch_source(...)``), so the loop reads every kind of data
the same way: ``batches(epoch, skip)`` gives one rank's batches of an epoch from batch ``skip`` on, in an
order that depends only on (seed, epoch), so a resumed run reads what the uninterrupted one would have.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .sampler import EpochBatches, EpochItems


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Ranks:
    """What building a dataset needs of the process group: whether this process is the root rank, and
    ``broadcast`` (the root's value, on every rank), so that one rank reads what all need (remote shards
    are counted once)."""

    is_root: bool = True
    broadcast: Callable[[Any], Any] = _same


@dataclass(frozen=True)
class Reading:
    """How this process reads: its share of every batch order (``rank`` of ``world``), the per-rank
    ``batch_size``, data-loader workers, the seed of the order, and pinned memory for a GPU."""

    batch_size: int
    rank: int = 0
    world: int = 1
    num_workers: int = 0
    seed: int = 0
    pin_memory: bool = False


class Samples(Protocol):
    """What turns a dataset's items into training batches (a trainer's task); runs in data-loader workers."""

    def make_item(self, dataset: Dataset, index: int, rng: random.Random) -> Any:
        """The sample of map-style item ``index``."""

    def make_sample(self, image: Tensor, captions: list[str], rng: random.Random) -> Any:
        """The sample of a decoded (image, captions) pair of a stream."""

    def sample_from_key(
        self, dataset: Dataset, url: str, key: str, captions: list[str], rng: random.Random
    ) -> Any | None:
        """A stream's sample without decoding its image (e.g. cached image tokens), or None to decode it."""

    def collate(self, items: list[Any]) -> Any: ...


class BatchSource(Protocol):
    """One rank's batches, epoch by epoch."""

    batches_per_epoch: int
    num_samples: int  # samples an epoch draws from, over all ranks

    def batches(self, epoch: int, skip: int = 0) -> Iterable[Any]:
        """This rank's batches of ``epoch`` from batch ``skip`` on (None for a batch whose every sample was
        broken: ranks still step together)."""


class TrainingData(Protocol):
    """What a trainer reads of its data: any dataset that hands out its batch source, lists its captions
    (to train a tokenizer, to check lengths) and describes itself for checkpoints (``IndexedDataset``'s
    kinds and ``ShardDataset`` do)."""

    streamed: bool  # read in order and never ahead (a stream's captions are checked as they come)

    def __len__(self) -> int: ...

    def captions(self) -> list[str]: ...

    def describe(self) -> dict[str, Any]: ...

    def batch_source(
        self,
        samples: Samples,
        reading: Reading,
        indices: Sequence[int] | None = None,
        *,
        shuffle: bool = True,
        on_skip: Callable[[Any], None] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> BatchSource: ...


class ItemBatches:
    """A map-style dataset's batches: a seeded permutation per epoch cut into global batches, each rank
    taking its slice (``sampler.EpochBatches``), items made by ``samples`` in the loader's workers."""

    def __init__(
        self,
        dataset: Dataset,
        samples: Samples,
        reading: Reading,
        indices: Sequence[int] | None = None,
        shuffle: bool = True,
    ) -> None:
        self.indices = list(range(len(dataset)) if indices is None else indices)
        self.items = EpochItems(dataset, samples.make_item, reading.seed)
        self.collate, self.reading, self.shuffle = samples.collate, reading, shuffle
        self.num_samples = len(self.indices)
        self.batches_per_epoch = self._order(epoch=0, skip=0).num_batches

    def _order(self, epoch: int, skip: int) -> EpochBatches:
        r = self.reading
        return EpochBatches(
            self.indices,
            r.batch_size,
            seed=r.seed,
            epoch=epoch,
            skip=skip,
            rank=r.rank,
            world_size=r.world,
            shuffle=self.shuffle,
        )

    def batches(self, epoch: int, skip: int = 0) -> DataLoader:
        return DataLoader(
            self.items,
            batch_sampler=self._order(epoch, skip),
            num_workers=self.reading.num_workers,
            collate_fn=self.collate,
            pin_memory=self.reading.pin_memory,
            # its own generator: making a loader (e.g. when resuming mid-epoch) must not draw from the
            # global RNG, or a resumed run would diverge from the uninterrupted one
            generator=torch.Generator().manual_seed(self.reading.seed * 7919 + epoch),
        )


class IndexedDataset(Dataset):
    """Base of map-style datasets: they are read through ``ItemBatches``."""

    streamed = False  # every item can be read ahead (e.g. to check every caption before training)

    def get(self, index: int, rng: random.Random | None) -> tuple[Tensor, list[str]]:
        """``(image, captions)`` of item ``index``; datasets with random augmentation draw it from ``rng``."""
        return self[index]

    def batch_source(
        self,
        samples: Samples,
        reading: Reading,
        indices: Sequence[int] | None = None,
        *,
        shuffle: bool = True,
        on_skip: Callable[[Any], None] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> BatchSource:
        """The batches of the items ``indices`` (default: all); map-style items are never skipped, so
        ``on_skip`` and ``log`` go unused."""
        return ItemBatches(self, samples, reading, indices, shuffle)
