"""The order in which a run reads its data: a seeded permutation per epoch, cut into global batches,
each rank taking its slice. The order depends only on (seed, epoch), so a run resumed at batch k of an
epoch reads exactly what the uninterrupted run would have read."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler


def item_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The random source for one item's augmentation and caption choice (string seeds hash stably)."""
    return random.Random(f"{seed}/{epoch}/{index}")


def split_indices(n: int, validation_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of ``range(n)`` into (train, validation)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1_000_003)).tolist()
    n_val = round(n * validation_fraction)
    if validation_fraction > 0:
        n_val = max(1, min(n_val, n - 1))
    return sorted(perm[n_val:]), sorted(perm[:n_val])


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, dataset index)`` for one rank, starting at batch ``skip`` of ``epoch``."""

    def __init__(
        self,
        indices: Sequence[int],
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        skip: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        self.indices, self.batch_size, self.seed, self.epoch = list(indices), batch_size, seed, epoch
        self.skip, self.rank, self.world_size, self.shuffle = skip, rank, world_size, shuffle
        global_batch = batch_size * world_size
        # one rank may take a short last batch; with several ranks an incomplete global batch is dropped
        # so that every rank steps the same number of times
        self.num_batches = (
            -(-len(self.indices) // global_batch) if world_size == 1 else len(self.indices) // global_batch
        )

    def __len__(self) -> int:
        return max(0, self.num_batches - self.skip)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = [self.indices[i] for i in torch.randperm(len(self.indices), generator=g).tolist()]
        global_batch = self.batch_size * self.world_size
        for b in range(self.skip, self.num_batches):
            chunk = order[b * global_batch : (b + 1) * global_batch]
            mine = chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            yield [(self.epoch, i) for i in mine]


class EpochItems(Dataset):
    """Maps ``(epoch, index)`` to a training sample through ``make`` (which gets a per-item RNG)."""

    def __init__(self, dataset: Dataset, make, seed: int) -> None:
        self.dataset, self.make, self.seed = dataset, make, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        return self.make(self.dataset, index, item_rng(self.seed, epoch, index))
