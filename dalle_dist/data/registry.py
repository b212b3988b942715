"""The kinds of dataset a run can read, and ``build_dataset``: the first kind whose test accepts the
``DataConfig`` builds it. A new kind is a module in this folder with a ``from_config`` and, if it is not a
map-style ``IndexedDataset``, a ``batch_source`` (see ``batches.py``), plus one line here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .batches import Ranks, TrainingData
from .config import DataConfig
from .folder import FolderDataset
from .shards import ShardDataset
from .synthetic import ShapesDataset


@dataclass(frozen=True)
class DatasetKind:
    name: str
    accepts: Callable[[DataConfig], bool]
    build: Callable[[DataConfig, Ranks], TrainingData]


DATASET_KINDS = (
    DatasetKind("shards", lambda config: bool(config.shard_keys), ShardDataset.from_config),
    DatasetKind("folder", lambda config: config.location is not None, FolderDataset.from_config),
    DatasetKind("shapes", lambda config: True, ShapesDataset.from_config),
)


def dataset_kind(config: DataConfig) -> str:
    """The name of the kind that reads ``config``."""
    return next(kind.name for kind in DATASET_KINDS if kind.accepts(config))


def build_dataset(config: DataConfig, ranks: Ranks | None = None) -> TrainingData:
    """The dataset ``config`` describes (``ranks``: several processes build it together)."""
    kind = next(kind for kind in DATASET_KINDS if kind.accepts(config))
    return kind.build(config, ranks or Ranks())
