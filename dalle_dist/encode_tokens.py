"""Encode every image of a DALL-E training set once with a frozen VAE, for ``train_dalle.py --image_tokens``.

    python -m dalle_dist.encode_tokens --vae_path runs/vae --image_text_folder data/birds
    python -m dalle_dist.encode_tokens --vae_path runs/vae --wds jpg,txt --image_text_folder data/shards

The data flags mean what they mean to ``train_dalle.py``. Each image gets the deterministic preprocessing
(the largest centred square, resized to the VAE's size), is encoded once, and its token ids go into one
``.npz`` (format: ``dalle_dist/data/token_cache.py``), by default beside the data:
``<folder>/image_tokens-<VAE hash>.npz``, or next to the shards. Broken images are skipped and counted as
training skips them (a folder fails on them, as ``train_dalle.py`` does; shards record them in the file).

An entry point beside the other command-line tools: it reads checkpoints (``checkpoint.py``) and data
(``data/``), and nothing in the package imports it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from .checkpoint import describe_vae, load_checkpoint, load_dalle, load_vae
from .cli import Parser, add_device_flag, cli, nonneg_int, output_file, positive_int
from .data import DataConfig, FolderDataset, build_dataset
from .data.shards import ShardDataset, Skipped, sample_key, shard_name
from .data.synthetic import SHAPE_COUNTS
from .data.token_cache import (
    PREPROCESSING,
    default_file_name,
    item_entry,
    token_dtype,
    vae_hash,
    write_token_file,
)
from .devices import pick_device
from .errors import UserError

SLOT_KINDS = ("missing image", "broken image")  # what centre_crops skips one sample for (not a shard)


def build_parser() -> Parser:
    parser = Parser(
        prog="python -m dalle_dist.encode_tokens",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--vae_path",
        type=Path,
        required=True,
        help="train_vae.py run directory or checkpoint (or a train_dalle.py one: the VAE it embeds)",
    )
    parser.add_argument(
        "--image_text_folder",
        type=str,
        default=None,
        help="folder of images + .txt captions, or with --wds shards (a .tar, a folder of them, a brace "
        "pattern, an http(s) URL or pipe: command); default: the built-in dataset",
    )
    parser.add_argument(
        "--wds", type=str, default="", help="read shards; image and caption keys, e.g. jpg,txt"
    )
    parser.add_argument("--dataset_size", type=int, default=20000, help="built-in dataset: items")
    parser.add_argument("--seed", type=int, default=0, help="built-in dataset: its seed")
    parser.add_argument(
        "--holdout", type=str, default="", help="built-in dataset: colour-shape pairs left out"
    )
    parser.add_argument(
        "--shapes", choices=tuple(SHAPE_COUNTS), default="one", help="built-in dataset: shapes per picture"
    )
    parser.add_argument(
        "--output",
        type=output_file,
        default=None,
        help="the .npz to write (default: image_tokens-<VAE hash>.npz in the folder / beside the shards)",
    )
    parser.add_argument("--batch_size", type=positive_int, default=64, help="images per VAE forward")
    parser.add_argument(
        "--num_workers", type=nonneg_int, default=0, help="data-loader processes decoding images"
    )
    add_device_flag(parser)
    return parser


def _load_vae(path: Path) -> tuple[nn.Module, str, str | None]:
    """The VAE, where it came from, and the SHA-256 of the weights file it was read from."""
    ckpt = load_checkpoint(path)  # which kind: a DALL-E checkpoint carries its VAE
    if ckpt.kind == "dalle":
        vae = load_dalle(ckpt.path)[0].vae
    else:
        vae, ckpt = load_vae(ckpt.path)
    return vae, str(ckpt.path), ckpt.meta.get("checksums", {}).get("model.safetensors")


def _dataset(args: argparse.Namespace, image_size: int) -> Any:
    """The dataset ``train_dalle.py`` builds from the same flags (its crop settings do not matter here;
    a broken pair in a folder stops the encoding, as it stops a run with ``--strict_data``)."""
    config = DataConfig(
        location=args.image_text_folder,
        image_size=image_size,
        seed=args.seed,
        strict=True,
        shard_keys=args.wds,
        dataset_size=args.dataset_size,
        holdout=args.holdout,
        shapes=SHAPE_COUNTS[args.shapes],
    )
    return build_dataset(config)


def _default_output(dataset: Dataset, name: str) -> Path:
    if isinstance(dataset, FolderDataset):
        return dataset.root / name
    if isinstance(dataset, ShardDataset) and not dataset.location.startswith(
        ("pipe:", "http://", "https://")
    ):
        location = Path(dataset.location)
        return (location if location.is_dir() else location.parent) / name
    raise UserError(
        f"give --output: the built-in dataset and remote shards have no folder to write {name} into"
    )


class _Images(IterableDataset):
    """``(key, image)`` or ``Skipped`` for every sample; worker w of n takes every n-th item or shard."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __iter__(self) -> Iterator[tuple[str, Tensor] | Skipped]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if isinstance(self.dataset, ShardDataset):
            for url in self.dataset.urls[worker::workers]:
                yield from self.dataset.centre_crops(url)
            return
        for i in range(worker, len(self.dataset), workers):
            key, _ = item_entry(self.dataset, i)
            item = self.dataset.get(i, None) if isinstance(self.dataset, FolderDataset) else self.dataset[i]
            yield key, item[0]


def encode(vae: nn.Module, dataset: Dataset, batch_size: int, num_workers: int, device: torch.device):
    """Keys, token rows and skipped slots of every sample, encoded in batches of ``batch_size``."""
    from tqdm import tqdm

    vae = vae.to(device).eval()
    keys: list[str] = []
    rows: list[np.ndarray] = []
    skipped: list[Skipped] = []
    pending: list[tuple[str, Tensor]] = []
    dtype = token_dtype(vae.num_tokens)

    def flush() -> None:
        with torch.no_grad():
            ids = vae.get_codebook_indices(torch.stack([image for _, image in pending]).to(device))
        rows.append(ids.cpu().numpy().astype(dtype))
        keys.extend(key for key, _ in pending)
        pending.clear()

    loader = DataLoader(_Images(dataset), batch_size=None, num_workers=num_workers)
    for item in tqdm(loader, total=len(dataset), unit="img", mininterval=2, disable=None):
        if isinstance(item, Skipped):
            skipped.append(item)
            continue
        pending.append(item)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    tokens = np.concatenate(rows) if rows else np.zeros((0, vae.image_seq_len), dtype)
    return keys, tokens, skipped


@cli
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse(argv)
    vae, source, checksum = _load_vae(args.vae_path)
    hash_ = vae_hash(describe_vae(vae), vae.state_dict())
    dataset = _dataset(args, vae.image_size)
    output = args.output or _default_output(dataset, default_file_name(hash_))
    start = time.perf_counter()
    keys, tokens, skipped = encode(vae, dataset, args.batch_size, args.num_workers, pick_device(args.device))
    data: dict[str, Any] = dataset.describe()
    if isinstance(dataset, ShardDataset):
        data["shard_counts"] = {shard_name(url): n for url, n in dataset.counts}
    meta = {
        "vae": {"hash": hash_, "source": source, "checksum": checksum, **describe_vae(vae)},
        "image_size": vae.image_size,
        "num_tokens": vae.num_tokens,
        "fmap_size": vae.fmap_size,
        "image_seq_len": vae.image_seq_len,
        "data": data,
        "preprocessing": PREPROCESSING,
        # slots whose image failed, so that training reports them as it would without the file
        "skipped": [[sample_key(s.shard, s.key), s.kind, s.detail] for s in skipped if s.kind in SLOT_KINDS],
    }
    write_token_file(output, keys, tokens, meta)
    seconds = time.perf_counter() - start
    kinds = Counter(s.kind for s in skipped)
    note = f"; skipped {sum(kinds.values())} ({', '.join(f'{k}: {n}' for k, n in sorted(kinds.items()))})"
    print(
        f"encoded {len(keys)} images into {output} ({tokens.shape[1]} tokens each, {seconds:.1f} s)"
        f"{note if skipped else ''}"
    )


if __name__ == "__main__":
    sys.exit(main())
