"""``DataConfig``: where a run's images and captions come from and how they are read, built once from the
flags (``training/flags.py``) and given to ``build_dataset``."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import DataError


@dataclass(frozen=True)
class DataConfig:
    """A dataset, described: ``location`` is a folder of images + captions, or with ``shard_keys`` a set of
    WebDataset shards; None is the built-in shapes dataset."""

    location: str | None = None
    image_size: int = 32
    seed: int = 0
    # folders and shards
    resize_ratio: float = 0.75  # random crops keep at least this share of the image area
    strict: bool = False  # folders: stop on the first kind of broken pair instead of skipping it
    check_size: bool = True  # folders: refuse images smaller than image_size (off for cached tokens)
    # shards
    shard_keys: str = ""  # image and caption member keys, e.g. "jpg,txt"; "" = not shards
    caption_field: str = "caption"  # the JSON field of a "json" caption member
    resampled: bool = False
    shuffle_buffer: int = 1000
    caption_limit: int = 100_000  # captions read from the stream to train a tokenizer
    # the built-in dataset
    dataset_size: int = 20000
    holdout: str = ""  # colour-shape pairs left out, e.g. "red triangle,blue circle"
    shapes: int = 1  # shapes per picture: 1, or 2 ("a small red square and a large blue circle")

    def __post_init__(self) -> None:
        if self.shard_keys and self.location is None:
            raise DataError(
                "--wds needs --image_text_folder naming the shards (a .tar, folder, pattern or URL)"
            )
