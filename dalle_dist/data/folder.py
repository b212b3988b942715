"""Image + caption folders in DALLE-pytorch's layout: ``cat.png`` next to ``cat.txt``, nested as you like.

Every image needs a ``.txt`` with the same relative path and stem (one caption per line). The folder is
checked once at construction, so a bad file fails before the first training step, not hours in.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from .batches import IndexedDataset, Ranks
from .config import DataConfig
from .errors import DataError
from .transforms import load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SKIP_KINDS = (
    "images_without_captions",
    "captions_without_images",
    "empty_captions",
    "unreadable_captions",
    "unreadable_images",
    "small_images",
)
_EXAMPLES = 3


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _examples(paths: list[str]) -> str:
    more = f" and {len(paths) - _EXAMPLES} more" if len(paths) > _EXAMPLES else ""
    return ", ".join(paths[:_EXAMPLES]) + more


def scan_folder(root: Path) -> tuple[dict[str, list[Path]], dict[str, Path]]:
    """Images and caption files by relative path without suffix; hidden files and folders are skipped."""
    images: dict[str, list[Path]] = {}
    texts: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root):
        # .ipynb_checkpoints, .git, ._ resource forks: never training data
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(folder, name)
            key = path.relative_to(root).with_suffix("").as_posix()
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                images.setdefault(key, []).append(path)
            elif suffix == ".txt":
                texts[key] = path
    return images, texts


def _read_captions(path: Path) -> list[str]:
    """Non-blank, stripped lines; raises UnicodeDecodeError / OSError for unreadable files."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _image_problem(path: Path, image_size: int) -> tuple[str, str] | None:
    """``(kind, why)`` when ``path`` cannot be trained on: Pillow cannot read it (``verify`` checks the
    whole file: PNG CRCs, truncation) or its shorter side is below ``image_size`` (upscaling would feed the
    model blur). None when it is fine."""
    try:
        with Image.open(path) as img:
            size = img.size
            img.verify()
    except Exception as error:  # Pillow raises many types for broken files
        return "unreadable_images", f"{type(error).__name__}: {str(error).replace(f' {str(path)!r}', '')}"
    if min(size) < image_size:
        return "small_images", f"{size[0]}x{size[1]}"
    return None


class FolderDataset(IndexedDataset):
    """``dataset[i] -> (image [3, image_size, image_size] in [0, 1], list of captions)``.

    ``strict=True`` raises :class:`DataError` on the first kind of problem found; ``strict=False`` skips
    the affected files and lists them in ``skipped`` (kind -> paths). ``random_crop=False`` gives the
    deterministic centre crop used for evaluation. ``check_size=False`` accepts images smaller than
    ``image_size`` (when they are not decoded for training, e.g. with a token cache).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int,
        resize_ratio: float = 0.75,
        strict: bool = True,
        random_crop: bool = True,
        check_size: bool = True,
    ) -> None:
        if not 0 < resize_ratio <= 1:
            raise ValueError(f"resize_ratio must be in (0, 1], got {resize_ratio}")
        self.root = Path(root)
        self.image_size = image_size
        self.resize_ratio = resize_ratio
        self.strict = strict
        self.random_crop = random_crop
        self.check_size = check_size
        self._messages: dict[str, str] = {}
        self.skipped: dict[str, list[str]] = {kind: [] for kind in SKIP_KINDS}
        self._items: list[tuple[Path, list[str]]] = []
        self._load()

    @classmethod
    def from_config(cls, config: DataConfig, ranks: Ranks) -> FolderDataset:
        """The folder of a ``DataConfig``: every rank scans it; broken pairs are skipped (the root rank
        lists them) unless ``strict``."""
        dataset = cls(
            config.location,
            config.image_size,
            resize_ratio=config.resize_ratio,
            strict=config.strict,
            check_size=config.check_size,
        )
        if ranks.is_root:
            for line in dataset.skip_report():
                print(line, flush=True)
        return dataset

    def skip_report(self) -> list[str]:
        """One line per kind of pair skipped, with the first few names; none when nothing was."""
        skipped = {kind: paths for kind, paths in self.skipped.items() if paths}
        if not skipped:
            return []
        total = sum(map(len, skipped.values()))
        lines = [
            f"data: skipped {total} of {total + len(self)} pairs in {self.root}, training on the "
            f"{len(self)} good ones (--strict_data stops instead)"
        ]
        for kind, paths in skipped.items():
            lines.append(f"data: skipped {len(paths)} {kind.replace('_', ' ')}: {_examples(paths)}")
        return lines

    def _problem(self, kind: str, paths: list[str], message: str) -> None:
        """Raise in strict mode; otherwise remember what was skipped."""
        if not paths:
            return
        if self.strict:
            raise DataError(message)
        self.skipped[kind].extend(paths)
        self._messages[kind] = message

    def _load(self) -> None:
        root = self.root
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "does not exist"
            raise DataError(
                f"image folder {str(root)!r} {what}: "
                "pass the folder that holds your images and their .txt captions"
            )
        images, texts = scan_folder(root)
        paired = sorted(images.keys() & texts.keys())
        if not paired:
            raise DataError(
                f"no image/caption pairs in {str(root)!r} ({sum(map(len, images.values()))} images, "
                f"{len(texts)} .txt files): put each image next to a .txt of the same name, e.g. "
                f"cat.png + cat.txt ({', '.join(IMAGE_SUFFIXES)})"
            )
        lonely_images = [str(p) for key in sorted(images.keys() - texts.keys()) for p in images[key]]
        self._problem(
            "images_without_captions",
            lonely_images,
            f"{_count(len(lonely_images), 'image')} without a caption file, e.g. {_examples(lonely_images)}: "
            "add a .txt with the same name or remove the image",
        )
        lonely_texts = [str(texts[key]) for key in sorted(texts.keys() - images.keys())]
        self._problem(
            "captions_without_images",
            lonely_texts,
            f"{_count(len(lonely_texts), 'caption file')} without an image, e.g. {_examples(lonely_texts)}: "
            "add an image with the same name or remove the .txt",
        )

        captions: dict[str, list[str]] = {}
        empty, unreadable = [], []
        for key in paired:
            try:
                lines = _read_captions(texts[key])
            except (OSError, UnicodeDecodeError) as error:
                unreadable.append((str(texts[key]), type(error).__name__))
                continue
            if lines:
                captions[key] = lines
            else:
                empty.append(str(texts[key]))
        self._problem(
            "empty_captions",
            empty,
            f"{_count(len(empty), 'empty caption file')}, e.g. {_examples(empty)}: "
            "write at least one caption line or remove the pair",
        )
        self._problem(
            "unreadable_captions",
            [path for path, _ in unreadable],
            f"{_count(len(unreadable), 'caption file')} not readable as UTF-8 text, e.g. "
            f"{_examples([f'{p} ({why})' for p, why in unreadable])}: re-save as UTF-8 or remove the pair",
        )

        bad: dict[str, list[tuple[str, str]]] = {"unreadable_images": [], "small_images": []}
        for key in sorted(captions):
            for path in images[key]:
                problem = _image_problem(path, self.image_size if self.check_size else 0)
                if problem is None:
                    self._items.append((path, captions[key]))
                else:
                    bad[problem[0]].append((str(path), problem[1]))
        broken, small = bad["unreadable_images"], bad["small_images"]
        self._problem(
            "unreadable_images",
            [path for path, _ in broken],
            f"{_count(len(broken), 'unreadable image')}, e.g. "
            f"{_examples([f'{p} ({why})' for p, why in broken])}: replace or remove them",
        )
        self._problem(
            "small_images",
            [path for path, _ in small],
            f"{_count(len(small), 'image')} smaller than the {self.image_size} px the model takes, e.g. "
            f"{_examples([f'{p} ({why})' for p, why in small])}: use images of at least {self.image_size} px "
            "or remove them",
        )
        if not self._items:
            raise DataError(
                f"every image/caption pair in {str(root)!r} was skipped: {'; '.join(self._messages.values())}"
            )

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> tuple[Tensor, list[str]]:
        # torch's generator is seeded per DataLoader worker, so workers crop differently yet reproducibly
        rng = random.Random(int(torch.randint(2**62, ()))) if self.random_crop else None
        return self.get(i, rng)

    def get(self, i: int, rng: random.Random | None) -> tuple[Tensor, list[str]]:
        """Item ``i`` cropped with ``rng`` (None: centre crop). The trainers pass a per-(epoch, item)
        generator, so crops do not depend on which worker loads the item or on a resume."""
        path, captions = self._items[i]
        if not self.random_crop:
            rng = None
        try:
            image = load_image(path, self.image_size, self.resize_ratio, rng)
        except Exception as error:
            raise DataError(f"cannot read image {path}: {error}: replace or remove it") from error
        return image, list(captions)

    def entry(self, i: int) -> tuple[str, list[str]]:
        """Item ``i``'s stable key (its image's path relative to the root, so the folder may move) and its
        captions, without reading the image."""
        path, captions = self._items[i]
        return path.relative_to(self.root).as_posix(), list(captions)

    def captions(self) -> list[str]:
        """Every caption line of every item (e.g. to train a tokenizer)."""
        return [line for _, lines in self._items for line in lines]

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary (stored in checkpoints)."""
        return {"kind": "folder", "root": str(self.root), "count": len(self._items)}
