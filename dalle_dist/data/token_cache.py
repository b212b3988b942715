"""Image tokens of a frozen VAE, computed once (``python -m dalle_dist.encode_tokens``) and looked up
by sample key during DALL-E training (``train_dalle.py --image_tokens FILE``) instead of encoding pixels
every step.

The file is one ``.npz`` read with ``allow_pickle=False``:

    keys     [N] fixed-width unicode, sorted: each sample's stable key (see ``item_entry`` / shards'
             ``sample_key``): an image path relative to its folder, ``shard.tar/key``, or a built-in index
    tokens   [N, image_seq_len] int16 (int32 when the codebook has more than 32767 entries)
    meta     a JSON string: format, the VAE's hash and source, image size, codebook size, token grid,
             the data it was made from, the preprocessing, and the samples skipped as broken

The tokens are those of the deterministic preprocessing (the largest centred square, resized), so they
stand in for the pixel path exactly when a run takes no random crop.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import random
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..files import fsync_path
from .errors import DataError
from .folder import FolderDataset
from .shards import ShardDataset, Skipped, sample_key, shard_name
from .synthetic import ShapesDataset
from .transforms import load_image

FORMAT = "dalle_dist.image_tokens"
FORMAT_VERSION = 1
ENCODE = "python -m dalle_dist.encode_tokens"
# what load_image does without an rng: recorded in the file, for people reading it
PREPROCESSING = {
    "crop": "largest centred square",
    "resize": "bicubic, antialiased when shrinking",
    "orientation": "EXIF transpose",
    "transparency": "composited on white",
    "values": "RGB in [0, 1]",
}


# ----------------------------------------------------------------------------------------- identity
def vae_hash(description: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a VAE's description (kind + config) and weights: the same for a VAE loaded from its own
    checkpoint or from a DALL-E checkpoint that embeds it, different after any change to either."""
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def default_file_name(hash_: str) -> str:
    return f"image_tokens-{hash_[:10]}.npz"


def token_dtype(num_tokens: int) -> np.dtype:
    return np.dtype(np.int16 if num_tokens <= np.iinfo(np.int16).max + 1 else np.int32)


# ----------------------------------------------------------------------------------------- sample keys
@functools.cache
def _one_pixel_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    return buffer.getvalue()


def skip_crop_draws(rng: random.Random, resize_ratio: float) -> None:
    """Take from ``rng`` the draws a random crop takes (by cropping a one-pixel image), so that what it
    gives next, the caption choice, is what a run that reads pixels gets."""
    load_image(io.BytesIO(_one_pixel_png()), 1, resize_ratio, rng)


def item_entry(dataset: Dataset, index: int, rng: random.Random | None = None) -> tuple[str, list[str]]:
    """Item ``index``'s key and captions, without reading its image; with ``rng``, the draws its random
    crop would take are taken first (see ``skip_crop_draws``)."""
    if isinstance(dataset, FolderDataset):
        if rng is not None and dataset.random_crop:
            skip_crop_draws(rng, dataset.resize_ratio)
        return dataset.entry(index)
    if isinstance(dataset, ShapesDataset):  # drawn without randomness: nothing to skip
        return str(index), dataset.attributes(index).captions()
    raise DataError(
        "--image_tokens works with image folders, shards and the built-in dataset, "
        f"not {type(dataset).__name__}"
    )


def stream_key(dataset: ShardDataset, url: str, key: str, rng: random.Random) -> str:
    """A shard sample's key, after taking the draws its random crop would take."""
    skip_crop_draws(rng, dataset.resize_ratio)
    return sample_key(url, key)


# ----------------------------------------------------------------------------------------- the file
def write_token_file(path: Path, keys: Sequence[str], tokens: np.ndarray, meta: dict[str, Any]) -> Path:
    """Write keys (sorted here) and tokens atomically: a temporary file, fsynced, renamed into place."""
    if len(keys) != len(tokens):
        raise ValueError(f"{len(keys)} keys for {len(tokens)} token rows")
    order = np.argsort(np.asarray(keys, dtype=str), kind="stable")
    sorted_keys = np.asarray(keys, dtype=str)[order]
    if len(sorted_keys) > 1 and (dup := np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])).size:
        raise DataError(
            f"sample key {sorted_keys[dup[0]]!r} occurs {dup.size + 1}+ times: keys must be unique (shards "
            "with the same file name in different folders? give them distinct names)"
        )
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "samples": len(keys)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                keys=sorted_keys,
                tokens=np.ascontiguousarray(tokens[order]),
                meta=np.array(json.dumps(meta)),
            )
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"could not write {path}: {e.strerror or e} (check free space and permissions)"
        ) from None
    return path


@dataclass
class TokenCache:
    """A token file, opened and checked: ``get(key)`` gives a sample's token ids."""

    path: Path
    keys: np.ndarray  # sorted
    tokens: np.ndarray
    meta: dict[str, Any]
    skipped: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (kind, detail)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TokenCache:
        """Open ``path`` without unpickling anything; a damaged or foreign file is a ``DataError``."""
        path = Path(path)
        if not path.is_file():
            raise DataError(
                f"--image_tokens {path} does not exist: write it with {ENCODE} --vae_path VAE "
                "and this run's data flags"
            )
        try:
            with np.load(path, allow_pickle=False) as npz:
                keys, tokens, meta = npz["keys"], npz["tokens"], json.loads(str(npz["meta"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(
                f"--image_tokens {path} is not a readable token file ({why}): rerun {ENCODE} to write it"
            ) from None
        problem = _format_problem(keys, tokens, meta)
        if problem:
            raise DataError(f"--image_tokens {path}: {problem}: rerun {ENCODE} to write it")
        skipped = {k: (kind, detail) for k, kind, detail in meta.get("skipped", [])}
        return cls(path, keys, tokens, meta, skipped)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def vae_hash(self) -> str:
        return self.meta["vae"]["hash"]

    def _rows(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key, -1 where absent."""
        if not len(self.keys):
            return np.full(len(keys), -1)
        rows = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[rows] == keys, rows, -1)

    def get(self, key: str) -> torch.Tensor | None:
        """The token ids of sample ``key`` (int16 / int32 ``[image_seq_len]``), or None."""
        if len(key) > self.keys.dtype.itemsize // 4:  # longer than any key in the file
            return None
        row = int(self._rows(np.asarray([key], dtype=self.keys.dtype))[0])
        return None if row < 0 else torch.from_numpy(self.tokens[row].copy())

    def stream_item(self, url: str, key: str, name: str) -> torch.Tensor | Skipped:
        """A shard sample's tokens, or why it has none: skipped as broken when encoded, or not encoded."""
        tokens = self.get(name)
        if tokens is not None:
            return tokens
        kind, detail = self.skipped.get(name, ("not in --image_tokens", f"rerun {ENCODE}"))
        return Skipped(kind, url, key, detail)

    # ------------------------------------------------------------------------------------- checks
    def check(self, vae_hash: str, image_size: int, dataset: Dataset) -> None:
        """Fail in one line unless this file holds this VAE's tokens for every sample of ``dataset``."""
        if self.meta["image_size"] != image_size:
            raise DataError(
                f"--image_tokens {self.path} holds tokens of {self.meta['image_size']} px images, this run "
                f"trains on {image_size} px: rerun {ENCODE} with this run's VAE"
            )
        if self.vae_hash != vae_hash:
            raise DataError(
                f"--image_tokens {self.path} was written with another VAE ({self.meta['vae'].get('source')}, "
                f"hash {self.vae_hash[:10]}; this run's is {vae_hash[:10]}): rerun {ENCODE} --vae_path "
                "naming this run's VAE"
            )
        data, kind = self.meta.get("data", {}), dataset.describe()["kind"]
        if data.get("kind") != kind:
            raise DataError(
                f"--image_tokens {self.path} was written for {data.get('kind')} data ({_where(data)}), this "
                f"run reads {kind} data: rerun {ENCODE} with this run's data flags"
            )
        missing, total, examples = self._missing(dataset)
        if missing:
            raise DataError(
                f"{missing} of {total} samples of {_where(dataset.describe())} are not in --image_tokens "
                f"{self.path} (e.g. {', '.join(examples)}): the data changed since it was encoded; rerun "
                f"{ENCODE} on this data"
            )

    def _missing(self, dataset: Dataset) -> tuple[int, int, list[str]]:
        """(samples without tokens, samples, a few of their keys)."""
        if isinstance(dataset, ShardDataset):
            # shard contents are streamed, not listed: a shard is covered when it has as many slots as
            # when it was encoded (a slot that still misses is skipped and reported when read)
            counts = self.meta["data"].get("shard_counts", {})
            changed = [(shard_name(u), n) for u, n in dataset.counts if counts.get(shard_name(u)) != n]
            return sum(n for _, n in changed), dataset.num_slots, [f"{name}/*" for name, _ in changed[:3]]
        if isinstance(dataset, ShapesDataset):
            data = self.meta["data"]
            # token files written before --shapes existed hold one-shape pictures
            recipe = {
                k: data.get(k, 1 if k == "shapes" else None)
                for k in ("seed", "holdout", "image_size", "shapes")
            }
            if recipe != {k: dataset.describe()[k] for k in recipe}:
                held = ", ".join(recipe["holdout"] or ["none"])
                return (
                    len(dataset),
                    len(dataset),
                    [
                        f"the file holds seed {recipe['seed']}, holdout {held}, "
                        f"{recipe['shapes']} shape(s) a picture"
                    ],
                )
        keys = np.asarray([item_entry(dataset, i)[0] for i in range(len(dataset))], dtype=str)
        absent = keys[self._rows(keys) < 0]
        return len(absent), len(keys), [str(k) for k in absent[:3]]


def _format_problem(keys: np.ndarray, tokens: np.ndarray, meta: Any) -> str | None:
    """What makes the arrays something other than a token file, or None."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return f"not a {FORMAT} file"
    if meta.get("format_version") != FORMAT_VERSION:
        return f"format version {meta.get('format_version')}, this dalle_dist reads {FORMAT_VERSION}"
    if keys.dtype.kind != "U" or keys.ndim != 1 or tokens.dtype.kind != "i" or tokens.ndim != 2:
        return f"unexpected arrays (keys {keys.dtype} {keys.shape}, tokens {tokens.dtype} {tokens.shape})"
    if len(keys) != len(tokens) or tokens.shape[1] != meta.get("image_seq_len"):
        return f"{len(keys)} keys, tokens {tokens.shape}, image_seq_len {meta.get('image_seq_len')}"
    if len(keys) > 1 and not bool(np.all(keys[1:] > keys[:-1])):
        return "keys are not sorted and unique"
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= meta.get("num_tokens", 0)):
        return f"token ids outside the codebook of {meta.get('num_tokens')}"
    return None


def _where(data: Mapping[str, Any]) -> str:
    return str(data.get("root") or data.get("location") or f"the built-in dataset, seed {data.get('seed')}")
