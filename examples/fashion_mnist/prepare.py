#!/usr/bin/env python
"""Fashion-MNIST as captioned 32 px RGB images and WebDataset shards for dalle_dist.

    sudo apt-get install dataset-fashion-mnist     # Debian / Ubuntu: the idx files, MIT (Expat) licence
    python examples/fashion_mnist/prepare.py --out runs/fashion_mnist/data [--train_limit N] [--test_limit N]

Reads the four idx files (``train-images-idx3-ubyte.gz`` ...; gzipped or not) that the Debian package puts
in /usr/share/datasets/fashion-mnist (``--data_dir`` or ``FASHION_MNIST_DIR`` for another place), and
writes

* ``OUT/train/00000-ankle_boot.png`` + ``.txt`` ...: the training split in file order (a flat folder, for
  train_vae.py),
* ``OUT/shards/shard-000000.tar`` ...: the same pairs as shards (``python -m dalle_dist.data.make_shards``'s
  writer, which stores them in sorted name order, i.e. the idx files' order: the classes come shuffled, as
  the loader's shuffle buffer needs; class sub-folders would give shards of one or two classes each),
  for train_dalle.py / train_clip.py ``--wds png,txt``,
* ``OUT/test/00000-ankle_boot.png`` + ``.txt`` ...: the held-out real test split, never trained on (the
  real images of evaluate.py ``--real``),
* ``OUT/reference/<prompt_with_underscores>/0.png`` ... + ``caption.txt``: ``--reference_per_class`` real
  *training* images per class in generate.py's layout: evaluate.py on them gives the figures real images
  reach at the generated images' count (the floor of the Fréchet distance, the ceiling of CLIP-score),
* ``OUT/prompts.txt``: the ten prompts joined by ``|`` (generate.py's ``--text``).

Each caption is ``a photo of {phrase}`` with the class's official name written as a natural phrase
(``T-shirt/top`` -> ``a photo of a t-shirt``, ``Trouser`` -> ``a photo of a pair of trousers``).

28 -> 32 px: each image is *padded* with 2 black pixels on every side, not resized. Our VAE halves the side
at each of its layers, so the side must be a power of two; Fashion-MNIST's background is exactly 0
(black), so the padding is indistinguishable from the background, keeps every original pixel as it was
(a 28 -> 32 resampling would blur every edge by a non-integer factor) and keeps the garment at its
original scale. The grey level is copied to R, G and B.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
from pathlib import Path

import numpy as np

# where the Debian package puts the idx files; FASHION_MNIST_DIR overrides it (as --data_dir does)
DEFAULT_DATA_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
INSTALL_HINT = "sudo apt-get install dataset-fashion-mnist"
# the ten official class names (label 0 ... 9) and how the captions say them
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
PHRASES = (
    "a t-shirt",
    "a pair of trousers",
    "a pullover",
    "a dress",
    "a coat",
    "a sandal",
    "a shirt",
    "a sneaker",
    "a bag",
    "an ankle boot",
)
# short names (no spaces or slashes) for file names
SLUGS = tuple(p.split(" ", 1)[1].replace("pair of ", "").replace(" ", "_") for p in PHRASES)
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_SIZE = 32  # the side after padding: a power of two for the VAE
PAD = (IMAGE_SIZE - 28) // 2
# idx type codes (the third header byte) -> NumPy dtype, big-endian as the format stores them
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class MissingData(Exception):
    """The idx files are not where we look; the message is one line naming the fix."""


class BadIdx(Exception):
    """A file that is not a well-formed idx file."""


def caption(label: int) -> str:
    """The caption of a class label (0 ... 9): ``a photo of a t-shirt`` ..."""
    return f"a photo of {PHRASES[label]}"


CAPTIONS = tuple(caption(i) for i in range(len(CLASSES)))


def label_of_caption(text: str) -> int | None:
    """The class a caption / prompt names (exact caption, case and spacing ignored), else None."""
    wanted = " ".join(text.lower().replace("_", " ").split())
    return CAPTIONS.index(wanted) if wanted in CAPTIONS else None


def parse_idx(data: bytes, name: str = "idx data") -> np.ndarray:
    """An idx file's bytes as an array: header = two zero bytes, a type code, the number of dimensions,
    then one big-endian uint32 per dimension; then the values, big-endian, C order."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise BadIdx(f"{name} is not an idx file (its first two bytes must be zero)")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise BadIdx(f"{name}: unknown idx type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise BadIdx(f"{name}: header cut short ({len(data)} bytes, {ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise BadIdx(f"{name}: {len(data)} bytes, but a {dims} {dtype} idx file has {expected}")
    values = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return values.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file, gzipped (``.gz``) or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return parse_idx(f.read(), str(path))


def find_idx(data_dir: Path, stem: str) -> Path:
    """``data_dir/stem.gz`` or ``data_dir/stem``; MissingData (one line, with the install command) if none."""
    for name in (f"{stem}.gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    raise MissingData(
        f"Fashion-MNIST not found: {data_dir} has no {stem}(.gz); install it with `{INSTALL_HINT}` "
        "(or pass --data_dir DIR holding the four idx files from github.com/zalandoresearch/fashion-mnist)"
    )


def load_split(data_dir: Path, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], labels int64 [N])`` of ``split`` ("train" or "test"); ``limit`` keeps
    the first N in file order (the files are shuffled, so every class keeps roughly a tenth)."""
    image_stem, label_stem = SPLITS[split]
    image_path, label_path = find_idx(data_dir, image_stem), find_idx(data_dir, label_stem)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise BadIdx(f"{image_path} {images.shape} and {label_path} {labels.shape} do not pair up")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise BadIdx(f"{label_path}: labels outside 0 ... {len(CLASSES) - 1}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images.astype(np.uint8), labels.astype(np.int64)


def to_rgb32(images: np.ndarray) -> np.ndarray:
    """uint8 ``[N, 28, 28]`` -> ``[N, 32, 32, 3]``: 2 black pixels of padding on every side, grey -> RGB."""
    side = images.shape[-1]
    pad = (IMAGE_SIZE - side) // 2
    if images.shape[-2:] != (side, side) or pad < 0 or side + 2 * pad != IMAGE_SIZE:
        raise ValueError(f"expected square images of an even side <= {IMAGE_SIZE}, got {images.shape[1:]}")
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))
    return np.repeat(padded[..., None], 3, axis=-1)


def write_folder(images: np.ndarray, labels: np.ndarray, out: Path) -> int:
    """``out/00000-<class>.png`` + same-named ``.txt`` caption per image, numbered in the given order
    (sorted names = that order); returns the count."""
    from PIL import Image

    rgb = to_rgb32(images)
    out.mkdir(parents=True, exist_ok=True)
    digits = max(5, len(str(len(rgb) - 1)))
    for i, (image, label) in enumerate(zip(rgb, labels, strict=True)):
        stem = out / f"{i:0{digits}d}-{SLUGS[label]}"
        Image.fromarray(image).save(stem.with_suffix(".png"), compress_level=1)
        stem.with_suffix(".txt").write_text(caption(int(label)) + "\n", encoding="utf-8")
    return len(rgb)


def write_reference(images: np.ndarray, labels: np.ndarray, out: Path, per_class: int) -> int:
    """The first ``per_class`` images of each class in generate.py's layout:
    ``out/<prompt with _ for spaces>/0.png ...`` + ``caption.txt``; returns the count."""
    from PIL import Image

    rgb = to_rgb32(images)
    written = 0
    for label, prompt in enumerate(CAPTIONS):
        folder = out / prompt.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "caption.txt").write_text(prompt + "\n", encoding="utf-8")
        for n, i in enumerate(np.flatnonzero(labels == label)[:per_class]):
            Image.fromarray(rgb[i]).save(folder / f"{n}.png")
            written += 1
    return written


def class_counts(labels: np.ndarray) -> str:
    counts = np.bincount(labels, minlength=len(CLASSES))
    return ", ".join(f"{SLUGS[i]} {c}" for i, c in enumerate(counts))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="examples/fashion_mnist/prepare.py",
        description="Fashion-MNIST -> captioned 32 px images (train/, test/) and train shards (shards/). "
        f"Get the data first: {INSTALL_HINT}",
    )
    parser.add_argument(
        "--data_dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="the idx files' folder (env FASHION_MNIST_DIR)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder to write train/, test/, shards/, reference/ into"
    )
    parser.add_argument("--train_limit", type=int, default=None, help="first N training images only")
    parser.add_argument("--test_limit", type=int, default=None, help="first N test images only")
    parser.add_argument("--maxcount", type=int, default=10000, help="samples per shard")
    parser.add_argument(
        "--reference_per_class",
        type=int,
        default=32,
        help="real training images per class in generate.py's layout (reference/); 0: none",
    )
    parser.add_argument("--no_shards", action="store_true", help="write the folders only")
    return parser


def prepare(args: argparse.Namespace) -> None:
    for flag in ("train_limit", "test_limit", "maxcount", "reference_per_class"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "reference_per_class" else 1):
            raise SystemExit(f"error: --{flag} must be >= 1, got {value}")
    # read everything first: a missing or broken file stops before anything is written
    train = load_split(args.data_dir, "train", args.train_limit)
    test = load_split(args.data_dir, "test", args.test_limit)
    for name in ("train", "test", "shards", "reference"):
        if (args.out / name).exists():
            raise SystemExit(f"error: {args.out / name} exists: remove it or choose another --out")
    start = time.perf_counter()
    for split, (images, labels) in (("train", train), ("test", test)):
        n = write_folder(images, labels, args.out / split)
        print(f"{split}: {n} images ({class_counts(labels)}) -> {args.out / split}", flush=True)
    if not args.no_shards:
        from dalle_dist.data.make_shards import make_shards

        written, _ = make_shards(args.out / "train", args.out / "shards", maxcount=args.maxcount)
        shards = len(list((args.out / "shards").glob("shard-*.tar")))
        print(f"shards: {written} samples in {shards} shards -> {args.out / 'shards'}", flush=True)
    if args.reference_per_class > 0:
        n = write_reference(*train, args.out / "reference", args.reference_per_class)
        print(f"reference: {n} real training images in generate.py's layout -> {args.out / 'reference'}")
    (args.out / "prompts.txt").write_text("|".join(CAPTIONS) + "\n", encoding="utf-8")
    print(f"prompts: {args.out / 'prompts.txt'}; written in {time.perf_counter() - start:.1f} s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        prepare(args)
    except (MissingData, BadIdx) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
