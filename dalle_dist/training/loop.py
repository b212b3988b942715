"""The training loop both trainers share: step, accumulate, clip, log, evaluate, sample, checkpoint, resume.

It knows a ``Task`` (what a sample is, what the loss is, what goes into a checkpoint) and a
``DistributedBackend`` (how the model is wrapped and stepped); never which engine runs underneath.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
import resource
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..data import shards
from ..data.sampler import EpochBatches, EpochItems
from ..data.shards import ShardDataset
from ..distributed import DistributedBackend, Wrapped
from ..errors import UserError
from .checkpoint import ENGINE_FOLDER, Checkpoint, RunDirectory, staging_folder, start_staging
from .faults import Faults
from .profiler import PROFILE_STEP, torch_profilers
from .schedule import LRSchedule
from .throughput import matmul_peak
from .tracking import Tracking


class Task(ABC):
    """What a run trains: the model, how items become batches, the loss, and what a checkpoint holds."""

    kind: str
    model: nn.Module

    @abstractmethod
    def make_item(self, dataset: Dataset, index: int, rng: random.Random) -> Any:
        """One training sample from dataset item ``index`` (runs in data-loader workers)."""

    @abstractmethod
    def collate(self, items: list[Any]) -> Any: ...

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any, step: int) -> tuple[Tensor, dict[str, float | Tensor]]:
        """The loss to minimise and extra numbers worth logging (detached; read only when logging)."""

    @abstractmethod
    def checkpoint_args(self) -> dict[str, Any]:
        """``kind``, ``meta`` and optionally ``tokenizer`` for ``save_checkpoint``."""

    def make_sample(self, image: Tensor, captions: list[str], rng: random.Random) -> Any:
        """One training sample from a decoded (image, captions) pair of a stream (runs in workers)."""
        raise UserError(f"{self.kind} training does not read shards: use an image folder")

    def save_samples(self, module: nn.Module, batch: Any, step: int, folder: Path) -> Path | None:
        """Write pictures of the model's progress; return the file written."""
        return None

    def log(self, line: str) -> None:
        """A line for the run's log (the loop points this at its own, on the root rank only)."""

    def flops_per_sample(self) -> float | None:
        """Useful training FLOPs of one sample, for tokens/s and MFU in the log (None: not estimated)."""
        return None

    def tokens_per_sample(self) -> int | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass
class LoopSettings:
    epochs: int
    batch_size: int
    seed: int = 0
    max_steps: int | None = None
    ga_steps: int = 1
    clip_grad_norm: float | None = None
    save_every_n_steps: int = 1000
    keep_n_checkpoints: int | None = None
    log_every: int = 10
    eval_every: int = 500
    eval_batches: int = 8
    sample_every: int = 1000
    num_workers: int = 0
    nonfinite_patience: int = 3  # batches in a row with a NaN / Inf loss before the run stops
    flops_profiler: bool = False  # profile one step, print the tables, stop (no checkpoint)


def to_device(batch: Any, device: torch.device, float_dtype: torch.dtype | None = None) -> Any:
    """``batch`` on ``device``; float tensors cast to ``float_dtype`` when given (ids stay integers)."""
    if isinstance(batch, Tensor):
        if float_dtype is not None and batch.is_floating_point():
            return batch.to(device, float_dtype, non_blocking=True)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device, float_dtype) for b in batch)
    return batch


class TrainingLoop:
    """Runs a ``Task`` to the end, writing checkpoints into a ``RunDirectory``."""

    def __init__(
        self,
        task: Task,
        backend: DistributedBackend,
        wrapped: Wrapped,
        schedule: LRSchedule,
        run: RunDirectory,
        settings: LoopSettings,
        dataset: Dataset,
        train_indices: list[int],
        val_indices: list[int],
        tracking: Tracking | None = None,
    ) -> None:
        self.task, self.backend, self.wrapped, self.schedule = task, backend, wrapped, schedule
        self.tracking = tracking or Tracking([], progress=False)
        self.run, self.s, self.log = run, settings, self.tracking.log
        task.log = self.log if backend.is_root else _quiet  # type: ignore[method-assign]
        self.dataset, self.train_indices, self.val_indices = dataset, train_indices, val_indices
        self.items = EpochItems(dataset, task.make_item, settings.seed)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        rank, world = backend.data_shard()
        self.rank, self.world = rank, world
        self.streaming = isinstance(dataset, ShardDataset)
        self.skipped: Counter[str] = Counter()
        self.faults = Faults()
        self.nonfinite_in_a_row = self.nonfinite_skipped = 0
        # samples that reached an optimizer step: before this process (from the checkpoint) and by this rank
        self.samples_before, self.samples_here = 0, 0
        self.sampled_at: int | None = None  # the step whose samples were drawn last
        if self.streaming:
            self.batches_per_epoch = shards.num_batches(dataset, settings.batch_size, world)
            for problem in dataset.shard_problems:
                self._skip(problem)
            readers = world * max(settings.num_workers, 1)
            if len(dataset.urls) < readers and self.backend.is_root:
                self.log(
                    f"note: {len(dataset.urls)} shards for {world} ranks x {max(settings.num_workers, 1)} "
                    "workers: shards are split between readers, so this works, but smaller shards "
                    "(make_shards --maxcount) let every worker read its own"
                )
        else:
            self.batches_per_epoch = EpochBatches(
                train_indices, settings.batch_size, seed=0, epoch=0, rank=rank, world_size=world
            ).num_batches
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / settings.ga_steps)
        if self.steps_per_epoch == 0:
            count = len(dataset) if self.streaming else len(train_indices)
            raise UserError(
                f"{count} training samples are fewer than one batch of "
                f"{settings.batch_size} x {world} ranks: lower --batch_size or add data"
            )
        self.total_steps = self.steps_per_epoch * settings.epochs
        if settings.max_steps is not None:
            self.total_steps = min(self.total_steps, settings.max_steps)
        if self.schedule.total_steps is None:
            self.schedule.total_steps = self.total_steps

    # --------------------------------------------------------------------------------- state
    def training_state(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "samples_trained": self.samples_before,
            "engine": self.wrapped.state_dict(),
            "schedule": self.schedule.state_dict(),
            "task": self.task.state_dict(),
            "rng": rng,
        }

    def load_training_state(self, checkpoint: Checkpoint) -> None:
        """Continue from ``checkpoint``: every rank reads it (engines load their own files collectively)."""
        state = checkpoint.training_state()
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.samples_before = int(state.get("samples_trained", 0))
        self.wrapped.load_state(state["engine"], checkpoint.path / ENGINE_FOLDER)
        self.schedule.load_state_dict(state["schedule"])
        self.task.load_state_dict(state["task"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def save(self, final: bool = False, weights: dict[str, Tensor] | None = None) -> Path | None:
        """Write a step checkpoint (or ``final/``); a collective call: every rank adds its engine files,
        the root rank the portable weights and the rest. Returns the folder on the root rank."""
        folder = self.run.final if final else self.run.step_folder(self.step)
        trained = self.samples_trained()
        self.backend.barrier()
        if self.backend.is_root:
            start_staging(folder)
        self.backend.barrier()
        self.wrapped.save_engine(staging_folder(folder) / ENGINE_FOLDER)
        if weights is None:
            weights = self.wrapped.full_state_dict()
        self.backend.barrier()
        path = None
        if self.backend.is_root:
            args = self.task.checkpoint_args()
            args["meta"] = {
                **args["meta"],
                "step": self.step,
                "epoch": self.epoch,
                "samples_trained": trained,
                "engine": self.wrapped.describe(),
            }
            if final:
                path = self.run.save_final(weights=weights, staged=True, **args)
            else:
                state = {**self.training_state(), "samples_trained": trained}
                path = self.run.save_step(
                    self.step,
                    keep=self.s.keep_n_checkpoints,
                    weights=weights,
                    training_state=state,
                    staged=True,
                    before_commit=lambda: self.faults.in_save(self.step, self.rank, staging_folder(folder)),
                    **args,
                )
        self.backend.barrier()
        return path

    def samples_trained(self) -> int:
        """Samples that went into optimizer steps over the whole run, all ranks (a collective call)."""
        here = torch.tensor(float(self.samples_here))
        if self.world > 1:
            here = self.backend.average(here) * self.world
        return self.samples_before + round(float(here))

    # --------------------------------------------------------------------------------- data
    def _loader(self, indices: list[int], epoch: int, skip: int, shuffle: bool = True) -> DataLoader:
        batches = EpochBatches(
            indices,
            self.s.batch_size,
            seed=self.s.seed,
            epoch=epoch,
            skip=skip,
            rank=self.rank,
            world_size=self.world,
            shuffle=shuffle,
        )
        return DataLoader(
            self.items,
            batch_sampler=batches,
            num_workers=self.s.num_workers,
            collate_fn=self.task.collate,
            pin_memory=self.backend.device.type == "cuda",
            # its own generator: making a loader (e.g. when resuming mid-epoch) must not draw from the
            # global RNG, or a resumed run would diverge from the uninterrupted one
            generator=torch.Generator().manual_seed(self.s.seed * 7919 + epoch),
        )

    def _stream(self, epoch: int, skip: int) -> Iterator[Any]:
        """Batches of this rank's share of the shards in ``epoch``, from batch ``skip`` on."""
        dataset: ShardDataset = self.dataset
        dataset.set_epoch(epoch, self.rank, self.world, skip * self.s.batch_size)
        dataset.make_item = self.task.make_sample
        loader = DataLoader(
            dataset,
            batch_size=None,  # slots one by one from the workers, batched here (see shards.batches)
            num_workers=self.s.num_workers,
            pin_memory=self.backend.device.type == "cuda",
        )
        # the workers drop whole rounds of the slots to skip; the main process the last few
        stream = itertools.islice(iter(loader), dataset.skip_plan(self.s.num_workers)[1], None)
        return shards.batches(
            stream, self.s.batch_size, self.batches_per_epoch - skip, self.task.collate, self._skip
        )

    def _skip(self, slot: shards.Skipped) -> None:
        self.skipped[slot.kind] += 1
        if self.skipped[slot.kind] <= 3 and self.backend.is_root:  # the first few of each kind, by name
            where = " ".join(part for part in (slot.shard, slot.key) if part)
            detail = f": {slot.detail}" if slot.detail and slot.detail != slot.shard else ""
            self.log(f"skipped ({slot.kind}) {where}{detail}")

    # --------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean validation loss over up to ``eval_batches`` batches (fixed RNG: no effect on training)."""
        if not self.val_indices:
            return None
        model = self.wrapped.model
        was_training = model.training
        model.eval()
        losses = []
        with torch.random.fork_rng(
            devices=[self.backend.device] if self.backend.device.type == "cuda" else []
        ):
            torch.manual_seed(self.s.seed)
            for i, batch in enumerate(self._loader(self.val_indices, epoch=0, skip=0, shuffle=False)):
                if i >= self.s.eval_batches:
                    break
                with self.wrapped.autocast():
                    batch = to_device(batch, self.backend.device, self.wrapped.input_dtype)
                    loss, _ = self.task.loss(model, batch, self.step)
                losses.append(float(self.backend.average(loss.detach().float())))
        model.train(was_training)
        return sum(losses) / len(losses) if losses else None

    def _samples(self, batch: Any) -> None:
        self.sampled_at = self.step
        # every rank enters (engines that partition the weights gather them); the root draws
        with self.wrapped.sampling_module() as module:
            if not self.backend.is_root:
                return
            with torch.random.fork_rng(
                devices=[self.backend.device] if self.backend.device.type == "cuda" else []
            ):
                torch.manual_seed(self.s.seed)
                path = self.task.save_samples(module, batch, self.step, self.run.samples)
        if path is not None:
            self.log(f"step {self.step}: samples in {path}")
            captions = path.with_suffix(".txt")
            caption = captions.read_text(encoding="utf-8").strip() if captions.is_file() else ""
            self.tracking.image("samples", path, self.step, caption.replace("\n", " | "))

    def _profilers(self) -> list[contextlib.AbstractContextManager]:
        """``--flops_profiler``'s contexts, one per training step: the engine's own, else torch's."""
        log = self.log if self.backend.is_root else _quiet
        engine = self.wrapped.profiler(log)
        return (
            [engine] if engine is not None else torch_profilers(self.wrapped.module, self.backend.device, log)
        )

    def _all_finite(self, loss: Tensor) -> bool:
        """Whether the loss is finite on every rank (a collective call when there are several)."""
        finite = torch.isfinite(loss.detach()).float()
        if self.world > 1:
            finite = self.backend.average(finite)
        return bool(finite == 1.0)

    def _skip_nonfinite(self, loss: Tensor) -> None:
        """Count a batch whose loss was NaN / Inf on some rank; stop after ``nonfinite_patience`` in a row."""
        self.nonfinite_in_a_row += 1
        self.nonfinite_skipped += 1
        limit = self.s.nonfinite_patience
        if self.backend.is_root:
            value, row = float(loss.detach()), self.nonfinite_in_a_row
            self.log(
                f"warning: step {self.step}: the loss is not finite (here {value:.4g}) on at least one rank: "
                f"batch skipped, no update ({row} in a row, stop at {limit})"
            )
        if self.nonfinite_in_a_row >= limit:
            latest = self.run.latest()
            kept = f"the last checkpoint ({latest}) is intact" if latest else "no checkpoint was written yet"
            raise UserError(
                f"the loss was not finite for {limit} batches in a row at step {self.step}: stopped; {kept}. "
                "Lower --learning_rate, enable --clip_grad_norm, or use --bf16 instead of --fp16, then "
                "continue with --resume"
            )

    def _record(self, record: dict[str, Any]) -> None:
        if self.backend.is_root:
            with open(self.run.root / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            self.tracking.metrics(record)

    # --------------------------------------------------------------------------------- the loop
    def fit(self) -> Path | None:
        """Train until ``epochs`` or ``max_steps``; write ``final/``; return its path (root rank)."""
        s = self.s
        model = self.wrapped.model
        model.train()
        device = self.backend.device
        t0, seen, window_loss, window_n = time.perf_counter(), 0, 0.0, 0
        if self.backend.is_root:
            self.log(
                f"training {self.task.kind}: {len(self.train_indices)} samples, "
                f"{self.steps_per_epoch} steps/epoch, {self.total_steps} steps, batch {s.batch_size} x "
                f"{self.world} ranks x {s.ga_steps} accumulation, device {device}"
            )
        flops, peak = self.task.flops_per_sample(), None
        if flops and self.backend.is_root:
            dtype = self.wrapped.precision.dtype
            peak = matmul_peak(device, dtype)
            self.log(
                f"model: {flops / 1e9:.2f} GFLOP per training sample; {device} {self.wrapped.precision.name} "
                f"matmul peak {peak / 1e9:.0f} GFLOP/s (MFU is measured against it)"
            )
        last_batch = None
        done = self.step >= self.total_steps
        start_step, started = self.step, time.perf_counter()
        self.tracking.start(self.step, self.total_steps)
        profile_at = min(self.step + PROFILE_STEP, self.total_steps - 1) if s.flops_profiler else -1
        profilers: list[contextlib.AbstractContextManager] = []
        profiling: contextlib.ExitStack | None = None
        while not done and self.epoch < s.epochs:
            epoch_losses = []
            if self.streaming:
                epoch_batches = self._stream(self.epoch, self.batch_in_epoch)
            else:
                epoch_batches = self._loader(self.train_indices, self.epoch, self.batch_in_epoch)
            for batch in epoch_batches:
                if self.step == profile_at and profiling is None and not profilers:
                    profilers = self._profilers()
                if profilers and profiling is None:  # one profiler per step
                    profiling = contextlib.ExitStack()
                    profiling.enter_context(profilers.pop(0))
                weight = 1.0
                if batch is None:  # every slot of this batch was broken: other ranks still step
                    if last_batch is None:
                        raise UserError(
                            "the first batch of the stream holds only broken samples: check the data"
                        )
                    batch, weight = last_batch, 0.0
                batch = to_device(batch, device, self.wrapped.input_dtype)
                last_batch = batch
                self.schedule.apply(self.wrapped.optimizer, self.step)
                with self.wrapped.micro_batch():
                    with self.wrapped.autocast():
                        loss, extra = self.task.loss(model, batch, self.step)
                    loss = self.faults.loss(loss, self.step, self.rank)
                    if not self._all_finite(loss):
                        # every rank skips together (a lone rank skipping would leave the others waiting)
                        self._skip_nonfinite(loss)
                        self.batch_in_epoch += 1
                        continue
                    self.nonfinite_in_a_row = 0
                    self.wrapped.backward(loss * weight if weight != 1.0 else loss)
                    if weight:
                        self.samples_here += batch_size_of(batch)
                stepped = self.wrapped.step()
                self.batch_in_epoch += 1
                seen += batch_size_of(batch) * self.world
                # kept as tensors: reading a value every step would stall a GPU on the hot path
                value = loss.detach().float()
                window_loss = window_loss + value
                window_n += 1
                epoch_losses.append(value)
                if not stepped:
                    continue
                self.step += 1
                self.tracking.advance()
                if profiling is not None:
                    profiling.close()  # prints its table
                    profiling = None
                    if not profilers:
                        if self.backend.is_root:
                            self.log(
                                f"--flops_profiler: profiled up to step {self.step}; stopped (no checkpoint)"
                            )
                        return None
                if self.step % s.log_every == 0 or self.step == self.total_steps:
                    elapsed = time.perf_counter() - t0
                    record = {
                        "step": self.step,
                        "epoch": self.epoch,
                        "loss": float(self.backend.average(window_loss / window_n)),
                        "lr": self.wrapped.optimizer.param_groups[0]["lr"],
                        "samples_per_s": seen / elapsed if elapsed > 0 else 0.0,
                        **{k: float(v) for k, v in extra.items()},
                    }
                    if self.wrapped.last_grad_norm is not None:
                        record["grad_norm"] = self.wrapped.last_grad_norm
                    if self.skipped:
                        record["skipped"] = sum(self.skipped.values())
                    if self.nonfinite_skipped:
                        record["nonfinite_skipped"] = self.nonfinite_skipped
                    tokens = self.task.tokens_per_sample()
                    if tokens:
                        record["tokens_per_s"] = record["samples_per_s"] * tokens
                    if peak:
                        record["mfu"] = record["samples_per_s"] / self.world * flops / peak
                    record.update(memory_gb(device))
                    self._record(record)
                    if self.backend.is_root:
                        per_step = (time.perf_counter() - started) / max(self.step - start_step, 1)
                        eta = per_step * (self.total_steps - self.step)
                        self.tracking.postfix({"loss": record["loss"], "samples/s": record["samples_per_s"]})
                        self.log(format_record(record, self.total_steps, eta))
                    t0, seen, window_loss, window_n = time.perf_counter(), 0, 0.0, 0
                if self.step % s.eval_every == 0:
                    val = self.evaluate()
                    if val is not None:
                        self.schedule.observe(val)
                        self._record({"step": self.step, "val_loss": val})
                        if self.backend.is_root:
                            self.log(f"step {self.step}: validation loss {val:.4f}")
                if self.step % s.sample_every == 0:
                    self._samples(batch)
                if self.step % s.save_every_n_steps == 0:
                    self.save()
                if self.step % s.eval_every == 0 or self.step % s.sample_every == 0:
                    t0, seen = time.perf_counter(), 0  # throughput counts training only
                if self.step >= self.total_steps:
                    done = True
                    break
            if not done:
                self.epoch += 1
                self.batch_in_epoch = 0
                self.schedule.end_of_epoch()
                if not self.val_indices and epoch_losses:
                    self.schedule.observe(float(torch.stack(epoch_losses).mean()))
        if self.skipped and self.backend.is_root:
            kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(self.skipped.items()))
            self.log(f"data: skipped on this rank: {kinds}")
            self._record({"step": self.step, "skipped_by_kind": dict(self.skipped)})
        trained = self.samples_trained()
        if self.backend.is_root:
            self.log(f"data: trained on {trained} samples in {self.step} steps")
            self._record({"step": self.step, "samples_trained": trained})
        if last_batch is not None and self.sampled_at != self.step:  # not twice when sample_every divides it
            self._samples(last_batch)
        val = self.evaluate()
        if val is not None and self.backend.is_root:
            self._record({"step": self.step, "val_loss": val})
            self.log(f"final validation loss {val:.4f}")
        weights = self.wrapped.full_state_dict()
        if self.world > 1:
            same = self.backend.same_on_all_ranks(weights)
            if self.backend.is_root:
                self.log(f"weights identical on all {self.world} ranks: {'yes' if same else 'NO'}")
            if not same:
                raise RuntimeError(
                    "ranks hold different weights at the end of training: the engine is broken"
                )
        self.save(weights=weights)  # the resumable state at the end, then the export
        return self.save(final=True, weights=weights)


def _quiet(_: str) -> None:
    pass


def batch_size_of(batch: Any) -> int:
    if isinstance(batch, Tensor):
        return batch.shape[0]
    if isinstance(batch, (list, tuple)) and batch:
        return batch_size_of(batch[0])
    return 0


def format_record(record: dict[str, Any], total_steps: int, eta_s: float | None = None) -> str:
    parts = [f"step {record['step']}/{total_steps}", f"epoch {record['epoch']}", f"loss {record['loss']:.4f}"]
    for key, value in record.items():
        if key not in ("step", "epoch", "loss") and isinstance(value, float):
            parts.append(f"{key} {value:.3g}")
    if eta_s is not None and record["step"] < total_steps:
        parts.append(f"eta {format_duration(eta_s)}")
    return " | ".join(parts)


def format_duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def memory_gb(device: torch.device) -> dict[str, float]:
    """Peak memory of this process: resident CPU memory, and the GPU's allocated memory on CUDA."""
    usage = {"cpu_mem_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # KiB on Linux
    if device.type == "cuda":
        usage["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return usage
