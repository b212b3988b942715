"""Data: the built-in shapes dataset, image + caption folders, WebDataset shards, Pillow/NumPy transforms,
the read order, and the batch sources the training loop reads."""

from .batches import BatchSource, IndexedDataset, Ranks, Reading, TrainingData
from .config import DataConfig
from .errors import DataError
from .folder import FolderDataset
from .registry import DATASET_KINDS, build_dataset, dataset_kind
from .synthetic import ShapesDataset
from .transforms import image_grid, label_image, load_image, to_pil

__all__ = [
    "DATASET_KINDS",
    "BatchSource",
    "DataConfig",
    "DataError",
    "FolderDataset",
    "IndexedDataset",
    "Ranks",
    "Reading",
    "ShapesDataset",
    "TrainingData",
    "build_dataset",
    "dataset_kind",
    "image_grid",
    "label_image",
    "load_image",
    "to_pil",
]
