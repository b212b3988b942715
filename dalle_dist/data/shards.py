"""WebDataset shards: tar files of ``key.jpg`` + ``key.txt`` (or ``key.json``) members, streamed.

Where (``--image_text_folder``): a ``.tar`` / ``.tar.gz`` file, a folder of them, a brace pattern
(``data-{000000..000099}.tar``), an ``http(s)://`` URL pattern or a ``pipe:`` command. img2dataset's output
is read as it is.

How a run reads them, exactly once per epoch on any number of ranks and workers:

- At start every shard's samples are counted (a *slot* is one key's group of members, good or broken).
- Each epoch shuffles the shard order with (seed, epoch), lays the slots end to end and gives each rank a
  contiguous 1/world of them (a rank reads its own shards, plus at most two it shares a boundary with).
  Its pieces are dealt to its data-loader workers; each worker passes its raw samples through a seeded
  shuffle buffer, then decodes them. So every slot is read once per epoch, ranks get equal counts, and
  fewer shards than ranks x workers still works (workers without a piece simply yield nothing).
- ``resampled``: for runs too large for one global order, each worker instead streams whole shards
  drawn at random with replacement; an "epoch" is then the same number of samples as a full pass.
- A broken slot (bad image, missing or empty caption, truncated tar, missing shard) still occupies its
  place in the stream as a ``Skipped`` record: the read order stays a pure function of (seed, epoch), a
  resumed run skips slots before decoding them, and the loop counts and reports what was skipped.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import random
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .batches import Ranks, Reading, Samples
from .config import DataConfig
from .errors import DataError
from .transforms import load_image

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclass(frozen=True)
class Keys:
    """Which members hold the image and the caption: ``--wds jpg,txt``; ``jpg;png,json`` tries jpg then png
    and reads the caption from a JSON member's ``caption_field``."""

    image: tuple[str, ...]
    caption: str
    caption_field: str = "caption"

    @staticmethod
    def parse(text: str, caption_field: str = "caption") -> Keys:
        parts = [p.strip().lower() for p in text.split(",")]
        if len(parts) != 2 or not all(parts):
            raise DataError(f"--wds {text!r}: give the image and caption keys, e.g. --wds jpg,txt")
        images = tuple(k.strip().lstrip(".") for k in parts[0].split(";") if k.strip())
        return Keys(images, parts[1].lstrip("."), caption_field)


@dataclass(frozen=True)
class Skipped:
    """A slot that yields no sample, and why (``SHARD_KINDS``: the whole shard's fault, not a sample's)."""

    kind: str
    shard: str
    key: str
    detail: str = ""


# kinds that say a shard is broken: every rank reading a piece of it meets them, so a job counts shards
SHARD_KINDS = ("missing shard", "truncated shard")


@dataclass(frozen=True)
class Piece:
    """Slots ``[start, stop)`` of shard ``url`` (which holds ``count`` slots in all)."""

    url: str
    start: int
    stop: int
    count: int


# ------------------------------------------------------------------------------------------- locations
def shard_name(url: str) -> str:
    """A shard's file name: what names it across runs and machines (its folder or host may change)."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def sample_key(url: str, key: str) -> str:
    """A sample's stable name: its shard's file name and its key in that shard."""
    return f"{shard_name(url)}/{key}"


def _expand(pattern: str) -> list[str]:
    from braceexpand import braceexpand

    return list(braceexpand(pattern))


def resolve_shards(location: str | os.PathLike) -> list[str]:
    """The shard URLs ``location`` names (a file, a folder, a brace pattern, http(s) or ``pipe:``)."""
    text = str(location)
    if text.startswith(("pipe:", "http://", "https://")):
        return _expand(text)
    path = Path(text)
    if path.is_dir():
        shards = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.name.endswith(SHARD_SUFFIXES))
        if not shards:
            raise DataError(f"{path} holds no .tar / .tar.gz shards: point --image_text_folder at shards")
        return shards
    if "{" in text:
        return _expand(text)  # missing shards are reported (and skipped) when read
    if path.is_file():
        return [text]
    raise DataError(f"{text} does not exist: give a .tar file, a folder of shards, a pattern or a URL")


def _open(url: str):
    """A readable byte stream for a shard (webdataset's opener: files, http(s) via curl, pipe:)."""
    from webdataset import gopen

    if not url.startswith(("pipe:", "http://", "https://")) and not Path(url).is_file():
        raise FileNotFoundError(url)
    return gopen(url, "rb")


def _split_name(name: str) -> tuple[str, str]:
    """``dir/key.ext.more`` -> (``dir/key``, ``ext.more``), webdataset's convention."""
    from webdataset.tariterators import base_plus_ext

    key, ext = base_plus_ext(name)
    return (key or name), (ext or "").lower()


def _groups(url: str, with_data: bool) -> Iterator[tuple[str, dict[str, bytes]] | Skipped]:
    """Each key's members in shard order (consecutive members share a key), then at most one ``Skipped``
    if the shard is missing or breaks off."""
    try:
        stream = _open(url)
    except (OSError, ValueError) as e:
        yield Skipped(SHARD_KINDS[0], url, "", str(e))
        return
    key, members = None, {}
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                if not info.isfile() or "/__" in "/" + info.name:
                    continue
                name_key, ext = _split_name(info.name)
                if name_key != key:
                    if key is not None:
                        yield key, members
                    key, members = name_key, {}
                extracted = tar.extractfile(info) if with_data else None
                members[ext] = extracted.read() if extracted is not None else b""
        if key is not None:
            yield key, members
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        yield Skipped(SHARD_KINDS[1], url, key or "", str(e) or type(e).__name__)
    finally:
        stream.close()


def count_slots(url: str) -> tuple[int, Skipped | None]:
    """How many keys a shard holds, and what is wrong with it: a missing shard holds none, a truncated one
    the samples before the break."""
    count, problem = 0, None
    for group in _groups(url, with_data=False):
        if isinstance(group, Skipped):
            problem = group
        else:
            count += 1
    return count, problem


def count_shards(urls: Sequence[str]) -> tuple[list[tuple[str, int]], list[Skipped]]:
    """``[(url, slots)]`` and the shards' problems: what ``ShardDataset`` needs (the root rank counts,
    the others receive it, so remote shards are read once)."""
    counts, problems = [], []
    for url in urls:
        count, problem = count_slots(url)
        counts.append((url, count))
        if problem is not None:
            problems.append(problem)
    return counts, problems


def epoch_pieces(
    counts: Sequence[tuple[str, int]], seed: int, epoch: int, rank: int, world: int
) -> list[Piece]:
    """Rank ``rank``'s contiguous share of the epoch's slots, as pieces of shards (see the module doc)."""
    order = list(counts)
    random.Random(f"shards/{seed}/{epoch}").shuffle(order)
    total = sum(c for _, c in order)
    per_rank = total // world  # equal for every rank: the few left over are this epoch's tail
    lo, hi = rank * per_rank, (rank + 1) * per_rank
    pieces, offset = [], 0
    for url, count in order:
        start, stop = max(lo - offset, 0), min(hi - offset, count)
        if start < stop:
            pieces.append(Piece(url, start, stop, count))
        offset += count
    return pieces


def resampled_pieces(
    counts: Sequence[tuple[str, int]], seed: int, epoch: int, rank: int, worker: int, quota: int
) -> list[Piece]:
    """Whole shards drawn at random with replacement (seeded per rank and worker) until ``quota`` slots:
    for runs too large to keep a global order, each worker streams on its own."""
    rng = random.Random(f"resample/{seed}/{epoch}/{rank}/{worker}")
    usable = [(url, count) for url, count in counts if count > 0]
    pieces, left = [], quota
    while left > 0 and usable:
        url, count = rng.choice(usable)
        take = min(count, left)
        pieces.append(Piece(url, 0, take, count))
        left -= take
    return pieces


def worker_skips(counts: Sequence[int], skip: int) -> tuple[list[int], int]:
    """Where to start reading after ``skip`` slots of a rank's stream: the slots each worker drops before
    decoding (whole rounds), and the few (< workers) the main process drops after them.

    torch's DataLoader takes one item from each live worker in turn, always starting at the first live
    one, so only whole rounds can be dropped inside the workers.
    """
    remaining, dropped = list(counts), [0] * len(counts)
    while skip > 0:
        live = [w for w, r in enumerate(remaining) if r > 0]
        if not live:
            break
        rounds = min(min(remaining[w] for w in live), skip // len(live))
        if rounds == 0:
            break
        for w in live:
            remaining[w] -= rounds
            dropped[w] += rounds
        skip -= rounds * len(live)
    return dropped, skip


# ------------------------------------------------------------------------------------------- the dataset
class _Pairs:
    """Samples as decoded: ``(image, captions)`` (what a stream yields when no task is given)."""

    def make_sample(self, image: torch.Tensor, captions: list[str], rng: random.Random) -> Any:
        return image, captions

    def sample_from_key(self, dataset: Any, url: str, key: str, captions: list[str], rng: random.Random):
        return None


class ShardDataset:
    """A set of shards, counted: ``stream(epoch, rank, world, skip, samples)`` reads one rank's share of
    an epoch, and ``batch_source`` gives the training loop its batches.

    ``counted`` is ``count_shards(resolve_shards(location))`` when already known (other ranks).
    """

    streamed = True  # read in order, never ahead: its captions are checked as they come

    def __init__(
        self,
        location: str | os.PathLike,
        keys: Keys,
        image_size: int,
        *,
        resize_ratio: float = 0.75,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        caption_limit: int = 100_000,
        resampled: bool = False,
        counted: tuple[list[tuple[str, int]], list[Skipped]] | None = None,
    ) -> None:
        self.location, self.keys, self.image_size = str(location), keys, image_size
        self.resize_ratio, self.seed, self.shuffle_buffer = resize_ratio, seed, shuffle_buffer
        self.caption_limit, self.resampled = caption_limit, resampled
        self.urls = resolve_shards(location)
        if counted is None:
            counted = count_shards(self.urls)
        self.counts, self.shard_problems = counted  # problems are reported once, by the batch source
        self.num_slots = sum(c for _, c in self.counts)
        if self.num_slots == 0:
            raise DataError(
                f"{location}: no samples in {len(self.urls)} shard(s) (missing or empty shards): "
                "check the path or pattern"
            )

    @classmethod
    def from_config(cls, config: DataConfig, ranks: Ranks) -> ShardDataset:
        """The shards of a ``DataConfig``; the root rank counts them, the others receive the counts."""
        location = config.location
        counted = ranks.broadcast(count_shards(resolve_shards(location)) if ranks.is_root else None)
        return cls(
            location,
            Keys.parse(config.shard_keys, config.caption_field),
            config.image_size,
            resize_ratio=config.resize_ratio,
            seed=config.seed,
            shuffle_buffer=config.shuffle_buffer,
            caption_limit=config.caption_limit,
            resampled=config.resampled,
            counted=counted,
        )

    def __len__(self) -> int:
        return self.num_slots

    def slots_per_rank(self, world: int) -> int:
        return self.num_slots // world

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "shards",
            "location": self.location,
            "shards": len(self.urls),
            "count": self.num_slots,
        }

    def captions(self) -> list[str]:
        """The first ``caption_limit`` captions in shard order (e.g. to train a tokenizer)."""
        found: list[str] = []
        for url in self.urls:
            for group in _groups(url, with_data=True):
                if isinstance(group, Skipped):
                    continue
                captions = self._captions(group[1])
                if isinstance(captions, list):
                    found.extend(captions)
                if len(found) >= self.caption_limit:
                    return found[: self.caption_limit]
        return found

    def centre_crops(self, url: str) -> Iterator[tuple[str, torch.Tensor] | Skipped]:
        """Shard ``url``'s slots in order as ``(sample_key, image)`` with the deterministic centre crop (no
        augmentation), or a ``Skipped``: for one pass over the data (``encode_tokens``)."""
        for group in _groups(url, with_data=True):
            if isinstance(group, Skipped):
                yield group
                continue
            key, members = group
            image_ext = next((k for k in self.keys.image if k in members), None)
            if image_ext is None:
                yield Skipped("missing image", url, key, f"no {'/'.join(self.keys.image)} member")
                continue
            try:
                image = load_image(io.BytesIO(members[image_ext]), self.image_size, self.resize_ratio, None)
            except Exception as e:  # Pillow raises many types for broken files
                yield Skipped("broken image", url, key, f"{type(e).__name__}: {e}")
                continue
            yield sample_key(url, key), image

    def stream(
        self, epoch: int, rank: int = 0, world: int = 1, skip: int = 0, samples: Samples | None = None
    ) -> ShardStream:
        """Rank ``rank`` of ``world``'s slots of ``epoch`` from slot ``skip`` on, made into samples by
        ``samples`` (a task: ``make_sample`` / ``sample_from_key``; default ``(image, captions)``)."""
        return ShardStream(self, epoch, rank, world, skip, samples or _Pairs())

    def batch_source(
        self,
        samples: Samples,
        reading: Reading,
        indices: Sequence[int] | None = None,
        *,
        shuffle: bool = True,
        on_skip: Callable[[Skipped], None] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> ShardBatches:
        """The training loop's batches (``data/batches.py``): every slot, in the stream's seeded order."""
        if (indices is not None and len(indices) != self.num_slots) or not shuffle:
            raise ValueError("shards are read whole and in their seeded order: no subsets, no fixed order")
        return ShardBatches(self, samples, reading, on_skip or (lambda _: None), log or (lambda _: None))

    # ----------------------------------------------------------------------------------- reading
    def _slots(self, pieces: list[Piece]) -> Iterator[tuple[str, str, dict[str, bytes]] | Skipped]:
        for piece in pieces:
            seen = 0
            for group in _groups(piece.url, with_data=True):
                if isinstance(group, Skipped):
                    break
                if piece.start <= seen < piece.stop:
                    yield piece.url, group[0], group[1]
                seen += 1
                if seen >= piece.stop:
                    break
            # a shard that reads shorter than counted (it changed or broke off): the slots stay, as skips
            for _ in range(max(piece.start, seen), piece.stop):
                yield Skipped(SHARD_KINDS[1], piece.url, f"#{seen}", "fewer samples than counted")
                seen += 1

    def _shuffled(self, slots: Iterator, rng: random.Random) -> Iterator:
        buffer: list = []
        for slot in slots:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(slot)
                continue
            i = rng.randrange(len(buffer))
            buffer[i], slot = slot, buffer[i]
            yield slot
        rng.shuffle(buffer)
        yield from buffer

    def _captions(self, members: dict[str, bytes]) -> list[str] | str:
        data = members.get(self.keys.caption)
        if data is None:
            return "missing caption"
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return "caption not UTF-8"
        if self.keys.caption == "json":
            try:
                value = json.loads(text).get(self.keys.caption_field)
            except (ValueError, AttributeError):
                return "caption JSON unreadable"
            lines = [value] if isinstance(value, str) else [v for v in value or [] if isinstance(v, str)]
        else:
            lines = text.splitlines()
        lines = [line.strip() for line in lines if line.strip()]
        return lines if lines else "empty caption"


class ShardStream(IterableDataset):
    """One rank's share of one epoch of a ``ShardDataset``, for a ``DataLoader`` (its workers split it)."""

    def __init__(
        self, dataset: ShardDataset, epoch: int, rank: int, world: int, skip: int, samples: Samples
    ) -> None:
        super().__init__()
        self.dataset, self.epoch, self.rank, self.world = dataset, epoch, rank, world
        self.skip, self.samples = skip, samples

    def _pieces(self, worker: int, workers: int) -> list[Piece]:
        """What worker ``worker`` of ``workers`` reads this epoch."""
        d = self.dataset
        if d.resampled:
            per_rank = d.slots_per_rank(self.world)
            quota = per_rank // workers + (worker < per_rank % workers)
            return resampled_pieces(d.counts, d.seed, self.epoch, self.rank, worker, quota)
        return epoch_pieces(d.counts, d.seed, self.epoch, self.rank, self.world)[worker::workers]

    def skip_plan(self, workers: int) -> tuple[list[int], int]:
        """``worker_skips`` for this epoch's pieces dealt to ``workers`` workers (0: the main process)."""
        workers = max(workers, 1)
        counts = [sum(p.stop - p.start for p in self._pieces(w, workers)) for w in range(workers)]
        return worker_skips(counts, self.skip)

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        pieces, skip = self._pieces(worker, workers), self.skip_plan(workers)[0][worker]
        rng = random.Random(f"buffer/{self.dataset.seed}/{self.epoch}/{self.rank}/{worker}")
        for i, slot in enumerate(self.dataset._shuffled(self.dataset._slots(pieces), rng)):
            if i < skip:
                continue  # before decoding: resuming costs reading, not decoding
            yield slot if isinstance(slot, Skipped) else self._decode(*slot)

    def _decode(self, url: str, key: str, members: dict[str, bytes]) -> Any:
        d = self.dataset
        captions = d._captions(members)
        if isinstance(captions, str):
            return Skipped(captions, url, key)
        image_ext = next((k for k in d.keys.image if k in members), None)
        if image_ext is None:
            return Skipped("missing image", url, key, f"no {'/'.join(d.keys.image)} member")
        rng = random.Random(f"{d.seed}/{self.epoch}/{url}/{key}")
        try:  # a sample may be refused with a ValueError (e.g. a caption longer than the text context)
            sample = self.samples.sample_from_key(d, url, key, captions, rng)
            if sample is not None:
                return sample
            try:
                image = load_image(io.BytesIO(members[image_ext]), d.image_size, d.resize_ratio, rng)
            except Exception as e:  # Pillow raises many types for broken files
                return Skipped("broken image", url, key, f"{type(e).__name__}: {e}")
            return self.samples.make_sample(image, captions, rng)
        except ValueError as e:
            return Skipped(type(e).__name__, url, key, str(e).splitlines()[0])


class ShardBatches:
    """The ``BatchSource`` of shards: batches of ``batch_size`` slots from this rank's stream; broken slots
    are reported through ``on_skip`` and not trained on."""

    def __init__(
        self,
        dataset: ShardDataset,
        samples: Samples,
        reading: Reading,
        on_skip: Callable[[Skipped], None],
        log: Callable[[str], None],
    ) -> None:
        self.dataset, self.samples, self.reading, self.on_skip = dataset, samples, reading, on_skip
        self.num_samples = dataset.num_slots
        self.batches_per_epoch = math.floor(dataset.slots_per_rank(reading.world) / reading.batch_size)
        for problem in dataset.shard_problems:
            on_skip(problem)
        readers = reading.world * max(reading.num_workers, 1)
        if len(dataset.urls) < readers:
            log(
                f"note: {len(dataset.urls)} shards for {reading.world} ranks x {max(reading.num_workers, 1)} "
                "workers: shards are split between readers, so this works, but smaller shards "
                "(make_shards --maxcount) let every worker read its own"
            )

    def batches(self, epoch: int, skip: int = 0) -> Iterator[Any]:
        r = self.reading
        stream = self.dataset.stream(epoch, r.rank, r.world, skip * r.batch_size, self.samples)
        loader = DataLoader(
            stream,
            batch_size=None,  # slots one by one from the workers, batched here
            num_workers=r.num_workers,
            pin_memory=r.pin_memory,
        )
        # the workers drop whole rounds of the slots to skip; the main process the last few
        slots = itertools.islice(iter(loader), stream.skip_plan(r.num_workers)[1], None)
        return batches(slots, r.batch_size, self.batches_per_epoch - skip, self.samples.collate, self.on_skip)


def batches(
    stream: Iterator[Any],
    batch_size: int,
    num_batches: int,
    collate: Callable[[list[Any]], Any],
    on_skip: Callable[[Skipped], None],
) -> Iterator[Any]:
    """``num_batches`` batches of ``batch_size`` slots each; skipped slots are reported, not trained on.
    A batch whose slots were all skipped comes as None (every rank must still step together)."""
    for _ in range(num_batches):
        items = []
        for _, slot in zip(range(batch_size), stream, strict=False):
            if isinstance(slot, Skipped):
                on_skip(slot)
            else:
                items.append(slot)
        yield collate(items) if items else None
