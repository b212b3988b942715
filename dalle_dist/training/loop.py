"""The training loop every trainer shares: step, accumulate, clip, log, evaluate, sample, checkpoint, resume.

It knows a ``Task`` (what a sample is, what the loss is, what goes into a checkpoint), the data's
``BatchSource`` (however the data is stored) and a ``DistributedBackend`` with its ``TrainingEngine`` (how
the model is wrapped and stepped); never which engine or which kind of data is underneath.
"""

from __future__ import annotations

import json
import math
import random
import resource
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import ENGINE_FOLDER, Checkpoint, RunDirectory, staging_folder, start_staging
from ..data import Reading, TrainingData
from ..data.shards import SHARD_KINDS
from ..distributed import DistributedBackend, TrainingEngine
from ..errors import UserError
from .compile import eager
from .faults import Faults
from .profiler import PROFILE_STEP, StepProfiler, torch_profilers
from .schedule import LRSchedule
from .task import Task
from .throughput import matmul_peak
from .tracking import Tracking


@dataclass
class LoopSettings:
    epochs: int
    batch_size: int
    seed: int = 0
    max_steps: int | None = None
    ga_steps: int = 1
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


@dataclass
class _Window:
    """What happened since the last log line: training samples, summed loss, micro-batches, time."""

    seen: int = 0
    loss: Tensor | float = 0.0  # kept as a tensor: reading it every step would stall a GPU
    n: int = 0
    start: float = field(default_factory=time.perf_counter)

    def restart_clock(self) -> None:
        """Throughput counts training only: evaluation and sampling time is left out."""
        self.seen, self.start = 0, time.perf_counter()

    def reset(self) -> None:
        self.restart_clock()
        self.loss, self.n = 0.0, 0


@dataclass(frozen=True)
class _StandIn:
    """A good batch standing in, with weight 0, for an all-broken one met before it."""

    batch: Any


class TrainingLoop:
    """Runs a ``Task`` to the end, writing checkpoints into a ``RunDirectory``."""

    def __init__(
        self,
        task: Task,
        backend: DistributedBackend,
        engine: TrainingEngine,
        schedule: LRSchedule,
        run: RunDirectory,
        settings: LoopSettings,
        dataset: TrainingData,
        train_indices: list[int],
        val_indices: list[int],
        tracking: Tracking | None = None,
        validation: TrainingData | None = None,
    ) -> None:
        """``val_indices`` hold out part of ``dataset``; ``validation`` is a dataset of its own instead
        (``--wds_val``: whole shards, read in their seeded order of epoch 0 at every evaluation)."""
        self.task, self.backend, self.engine, self.schedule = task, backend, engine, schedule
        self.tracking = tracking or Tracking([], progress=False)
        self.run, self.settings, self.log = run, settings, self.tracking.log
        task.log = self.log if backend.is_root else _quiet  # type: ignore[method-assign]
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.rank, self.world = backend.data_shard()
        self.skipped: Counter[str] = Counter()
        self.broken_shards: dict[str, set[str]] = {}  # SHARD_KINDS -> the shards this rank found broken
        self.faults = Faults()
        self.nonfinite_in_a_row = self.nonfinite_skipped = 0
        # samples that reached an optimizer step: before this process (from the checkpoint) and by this rank
        self.samples_before, self.samples_here = 0, 0
        self.sampled_at: int | None = None  # the step whose samples were drawn last
        self.evaluated_at: int | None = None  # and the step of the last validation
        self.last_batch: Any = None  # stands in for a batch whose every sample was broken
        self.flops: float | None = None  # per sample, and the device's matmul peak: the root rank's MFU
        self.peak: float | None = None
        reading = Reading(
            settings.batch_size,
            self.rank,
            self.world,
            settings.num_workers,
            settings.seed,
            pin_memory=backend.device.type == "cuda",
        )
        root_log = self.log if backend.is_root else _quiet
        self.train_batches = dataset.batch_source(
            task, reading, train_indices, on_skip=self._skip, log=root_log
        )
        self.val_batches = (
            dataset.batch_source(task, reading, val_indices, shuffle=False) if val_indices else None
        )
        if validation is not None:
            self.val_batches = validation.batch_source(task, reading)
            if self.val_batches.batches_per_epoch == 0:
                raise UserError(
                    f"the validation data holds {self.val_batches.num_samples} samples, fewer than one batch "
                    f"of {settings.batch_size} x {self.world} ranks: give more validation shards"
                )
        self.steps_per_epoch = math.ceil(self.train_batches.batches_per_epoch / settings.ga_steps)
        if self.steps_per_epoch == 0:
            raise UserError(
                f"{self.train_batches.num_samples} training samples are fewer than one batch of "
                f"{settings.batch_size} x {self.world} ranks: lower --batch_size or add data"
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
            "engine": self.engine.state_dict(),
            "schedule": self.schedule.state_dict(),
            "task": self.task.state_dict(),
            "rng": rng,
        }

    def load_training_state(self, checkpoint: Checkpoint) -> None:
        """Continue from ``checkpoint``: every rank reads it (engines load their own files collectively)."""
        state = checkpoint.training_state()
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.samples_before = int(state.get("samples_trained", 0))
        self.engine.load_state(state["engine"], checkpoint.path / ENGINE_FOLDER)
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
        self.engine.save_engine(staging_folder(folder) / ENGINE_FOLDER)
        if weights is None:
            weights = self._gathered_weights()
        self.backend.barrier()
        path = None
        if self.backend.is_root:
            args = self.task.checkpoint_args()
            weights, extra = self.task.split_weights(weights)
            if extra:
                args["extra_weights"] = {**args.get("extra_weights", {}), **extra}
            args["meta"] = {
                **args["meta"],
                "step": self.step,
                "epoch": self.epoch,
                "samples_trained": trained,
                "engine": self.engine.describe(),
            }
            if final:
                path = self.run.save_final(weights=weights, staged=True, **args)
            else:
                state = {**self.training_state(), "samples_trained": trained}
                path = self.run.save_step(
                    self.step,
                    keep=self.settings.keep_n_checkpoints,
                    weights=weights,
                    training_state=state,
                    staged=True,
                    before_commit=lambda: self.faults.in_save(self.step, self.rank, staging_folder(folder)),
                    **args,
                )
        self.backend.barrier()
        return path

    def _gathered_weights(self) -> dict[str, Tensor]:
        """The weights a checkpoint saves (a collective call), after the task has refreshed them."""
        self.task.before_save(self.engine.module)
        return self.engine.full_state_dict()

    def samples_trained(self) -> int:
        """Samples that went into optimizer steps over the whole run, all ranks (a collective call)."""
        here = torch.tensor(float(self.samples_here))
        if self.world > 1:
            here = self.backend.average(here) * self.world
        return self.samples_before + round(float(here))

    def skipped_in_job(self) -> Counter[str]:
        """Broken samples skipped by kind, summed over the ranks (a collective call): each rank reads its
        own part of the data, so one rank's counts are only its share."""
        mine = (dict(self.skipped), {kind: sorted(urls) for kind, urls in self.broken_shards.items()})
        total: Counter[str] = Counter()
        shards: dict[str, set[str]] = {}
        for counts, broken in self.backend.gather_objects(mine) if self.world > 1 else [mine]:
            total.update({kind: n for kind, n in counts.items() if kind not in SHARD_KINDS})
            for kind, urls in broken.items():
                shards.setdefault(kind, set()).update(urls)
        total.update({kind: len(urls) for kind, urls in shards.items()})  # a shard counts once, not per rank
        return total

    def _skip(self, slot: Any) -> None:
        """A broken sample (a ``shards.Skipped``): counted, and the first few of each kind named."""
        self.skipped[slot.kind] += 1
        if slot.kind in SHARD_KINDS:
            self.broken_shards.setdefault(slot.kind, set()).add(slot.shard)
        if self.skipped[slot.kind] <= 3 and self.backend.is_root:
            where = " ".join(part for part in (slot.shard, slot.key) if part)
            detail = f": {slot.detail}" if slot.detail and slot.detail != slot.shard else ""
            self.log(f"skipped ({slot.kind}) {where}{detail}")

    # --------------------------------------------------------------------------------- the loop
    def fit(self) -> Path | None:
        """Train until ``epochs`` or ``max_steps``; write ``final/``; return its path (root rank)."""
        self._announce()
        self.engine.model.train()
        self.tracking.start(self.step, self.total_steps)
        window, started_at = _Window(), (self.step, time.perf_counter())
        start = min(self.step + PROFILE_STEP, self.total_steps - 1) if self.settings.flops_profiler else -1
        profiler = StepProfiler(start, self._profilers)
        while self.step < self.total_steps and self.epoch < self.settings.epochs:
            epoch_losses: list[Tensor] = []
            for batch in self._with_stand_ins(self.train_batches.batches(self.epoch, self.batch_in_epoch)):
                profiler.before_batch(self.step)
                extra = self._train_step(batch, window, epoch_losses)
                if extra is None:  # no optimizer step yet (accumulating, or a skipped batch)
                    continue
                if profiler.after_step():
                    if self.backend.is_root:
                        self.log(
                            f"--flops_profiler: profiled up to step {self.step}; stopped (no checkpoint)"
                        )
                    return None
                if self.step % self.settings.log_every == 0 or self.step == self.total_steps:
                    self._log_window(window, extra, started_at)
                self._periodic(window)
                if self.step >= self.total_steps:
                    break
            else:
                self._end_epoch(epoch_losses)
        return self._finish()

    def _with_stand_ins(self, batches: Iterator[Any]) -> Iterator[Any]:
        """``batches``, where the all-broken batches (None) a rank meets before its first good one get that
        good one as their zero-weight stand-in (read ahead, then trained on at its own step): the rank
        still steps with the others, as it does later with its last good batch."""
        waiting = 0
        for batch in batches:
            if batch is None and self.last_batch is None:
                waiting += 1
                continue
            for _ in range(waiting):
                yield _StandIn(batch)
            waiting = 0
            yield batch
        yield from [None] * waiting  # not one good batch in the epoch: _train_step says so

    def _announce(self) -> None:
        """The run's shape, and the model's FLOPs against the device's peak (what MFU is measured by)."""
        if not self.backend.is_root:
            return
        s, device = self.settings, self.backend.device
        self.log(
            f"training {self.task.kind}: {self.train_batches.num_samples} samples, "
            f"{self.steps_per_epoch} steps/epoch, {self.total_steps} steps, batch {s.batch_size} x "
            f"{self.world} ranks x {s.ga_steps} accumulation, device {device}"
        )
        self.flops = self.task.flops_per_sample()
        if self.flops:
            precision = self.engine.precision
            self.peak = matmul_peak(device, precision.dtype)
            self.log(
                f"model: {self.flops / 1e9:.2f} GFLOP per training sample; {device} {precision.name} "
                f"matmul peak {_gflops(self.peak)} GFLOP/s (MFU is measured against it)"
            )

    def _train_step(
        self, batch: Any, window: _Window, epoch_losses: list[Tensor]
    ) -> dict[str, float | Tensor] | None:
        """Forward and backward of one micro-batch, and the optimizer step that ends an accumulation
        window. Returns the task's extra figures when the optimizer stepped, None otherwise."""
        weight = 1.0
        if isinstance(batch, _StandIn):  # a broken batch before this rank's first good one
            batch, weight = batch.batch, 0.0
        elif batch is None:  # every slot of this batch was broken: other ranks still step
            if self.last_batch is None:
                raise UserError("this rank's data held not one good batch in an epoch: check the data")
            batch, weight = self.last_batch, 0.0
        batch = to_device(batch, self.backend.device, self.engine.input_dtype)
        self.last_batch = batch
        self.schedule.apply(self.engine.optimizer, self.step)
        with self.engine.micro_batch():
            with self.engine.autocast():
                loss, extra = self.task.loss(self.engine.model, batch, self.step)
            loss = self.faults.loss(loss, self.step, self.rank)
            if not self._all_finite(loss):
                # every rank skips together (a lone rank skipping would leave the others waiting)
                self._skip_nonfinite(loss)
                self.batch_in_epoch += 1
                return None
            self.nonfinite_in_a_row = 0
            self.engine.backward(loss * weight if weight != 1.0 else loss)
            if weight:
                self.samples_here += batch_size_of(batch)
        stepped = self.engine.step()
        self.batch_in_epoch += 1
        window.seen += batch_size_of(batch) * self.world
        value = loss.detach().float()
        window.loss, window.n = window.loss + value, window.n + 1
        epoch_losses.append(value)
        if not stepped:
            return None
        self.step += 1
        self.task.after_step(self.step)
        self.tracking.advance()
        return extra

    def _log_window(
        self, window: _Window, extra: dict[str, float | Tensor], started_at: tuple[int, float]
    ) -> None:
        """The log record of the steps since the last one (loss, rate, MFU, memory), then a new window."""
        elapsed = time.perf_counter() - window.start
        record = {
            "step": self.step,
            "epoch": self.epoch,
            "loss": float(self.backend.average(window.loss / window.n)),
            "lr": self.engine.optimizer.param_groups[0]["lr"],
            "samples_per_s": window.seen / elapsed if elapsed > 0 else 0.0,
            **{k: float(v) for k, v in extra.items()},
        }
        if self.engine.last_grad_norm is not None:
            record["grad_norm"] = self.engine.last_grad_norm
        if self.skipped:
            record["skipped"] = sum(self.skipped.values())
        if self.nonfinite_skipped:
            record["nonfinite_skipped"] = self.nonfinite_skipped
        tokens = self.task.tokens_per_sample()
        if tokens:
            record["tokens_per_s"] = record["samples_per_s"] * tokens
        if self.flops and self.peak:
            record["mfu"] = record["samples_per_s"] / self.world * self.flops / self.peak
        record.update(memory_gb(self.backend.device))
        self._record(record)
        if self.backend.is_root:
            first_step, first_time = started_at
            per_step = (time.perf_counter() - first_time) / max(self.step - first_step, 1)
            eta = per_step * (self.total_steps - self.step)
            self.tracking.postfix({"loss": record["loss"], "samples/s": record["samples_per_s"]})
            self.log(format_record(record, self.total_steps, eta))
        window.reset()

    def _periodic(self, window: _Window) -> None:
        """What comes every so many steps: validation, sample pictures, a checkpoint."""
        s = self.settings
        evaluate, sample = self.step % s.eval_every == 0, self.step % s.sample_every == 0
        if evaluate:
            self.evaluated_at = self.step
            val = self.evaluate()
            if val is not None:
                self.schedule.observe(val)
                self._record({"step": self.step, "val_loss": val, **self._val_extra()})
                if self.backend.is_root:
                    self.log(f"step {self.step}: validation loss {val:.4f}{self._val_text()}")
        if sample:
            self._samples(self.last_batch)
        if self.step % s.save_every_n_steps == 0:
            self.save()
        if evaluate or sample:
            window.restart_clock()

    def _end_epoch(self, epoch_losses: list[Tensor]) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0
        self.schedule.end_of_epoch()
        if self.val_batches is None and epoch_losses:
            self.schedule.observe(float(torch.stack(epoch_losses).mean()))

    def _finish(self) -> Path | None:
        """The end of a run: what was skipped and trained, final samples and validation, the weights
        checked equal on every rank, the last resumable checkpoint, then the ``final/`` export."""
        skipped = self.skipped_in_job()
        if skipped and self.backend.is_root:
            kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(skipped.items()))
            ranks = f" (all {self.world} ranks)" if self.world > 1 else ""
            self.log(f"data: skipped{ranks}: {kinds}")
            self._record({"step": self.step, "skipped_by_kind": dict(skipped)})
        trained = self.samples_trained()
        if self.backend.is_root:
            self.log(f"data: trained on {trained} samples in {self.step} steps")
            self._record({"step": self.step, "samples_trained": trained})
        if self.last_batch is not None and self.sampled_at != self.step:  # not twice for the last step
            self._samples(self.last_batch)
        val = self.evaluate() if self.evaluated_at != self.step else None  # not twice for the last step
        if val is not None and self.backend.is_root:
            self._record({"step": self.step, "val_loss": val, **self._val_extra()})
            self.log(f"final validation loss {val:.4f}{self._val_text()}")
        weights = self._gathered_weights()
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

    # --------------------------------------------------------------------------------- around the steps
    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean validation loss over up to ``eval_batches`` batches (fixed RNG: no effect on training); the
        task's other validation figures are left in ``val_figures``."""
        self.val_figures: dict[str, float] = {}
        if self.val_batches is None:
            return None
        model = self.engine.model
        was_training = model.training
        model.eval()
        names = self.task.eval_figure_names
        sums = torch.zeros(1 + len(names), dtype=torch.float64)
        batches = 0
        with torch.random.fork_rng(devices=self._cuda_devices()):
            torch.manual_seed(self.settings.seed)
            for i, batch in enumerate(self.val_batches.batches(epoch=0)):
                if i >= self.settings.eval_batches:
                    break
                values = torch.zeros(len(names) + 2, device=self.backend.device)
                if batch is not None:  # None: every slot broken (shards): this rank adds nothing, yet joins
                    with self.engine.autocast():
                        batch = to_device(batch, self.backend.device, self.engine.input_dtype)
                        loss, _ = self.task.loss(model, batch, self.step)
                        extra = self.task.eval_figures(model, batch) if names else values[:0]
                    values = torch.cat([loss.detach().float().reshape(1), extra.float(), values.new_ones(1)])
                # one collective for all: the means over the ranks that had a batch
                mean = self.backend.average(values).double().cpu()
                if mean[-1] > 0:
                    sums += mean[:-1] / mean[-1]
                    batches += 1
        model.train(was_training)
        if not batches:
            return None
        means = (sums / batches).tolist()
        self.val_figures = self.task.eval_summary(dict(zip(names, means[1:], strict=True)))
        return means[0]

    def _val_extra(self) -> dict[str, float]:
        return {f"val_{name}": value for name, value in self.val_figures.items()}

    def _val_text(self) -> str:
        return "".join(f", {name} {value:.4g}" for name, value in self.val_figures.items())

    def _cuda_devices(self) -> list[torch.device]:
        return [self.backend.device] if self.backend.device.type == "cuda" else []

    def _samples(self, batch: Any) -> None:
        self.sampled_at = self.step
        # every rank enters (engines that partition the weights gather them); the root draws
        with self.engine.sampling_module() as module:
            if not self.backend.is_root:
                return
            with torch.random.fork_rng(devices=self._cuda_devices()), eager():
                torch.manual_seed(self.settings.seed)
                path = self.task.save_samples(module, batch, self.step, self.run.samples)
        if path is not None:
            self.log(f"step {self.step}: samples in {path}")
            captions = path.with_suffix(".txt")
            caption = captions.read_text(encoding="utf-8").strip() if captions.is_file() else ""
            self.tracking.image("samples", path, self.step, caption.replace("\n", " | "))

    def _profilers(self) -> list:
        """``--flops_profiler``'s contexts, one per training step: the engine's own, else torch's."""
        log = self.log if self.backend.is_root else _quiet
        engine = self.engine.profiler(log)
        return (
            [engine] if engine is not None else torch_profilers(self.engine.module, self.backend.device, log)
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
        limit = self.settings.nonfinite_patience
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


def _gflops(flops_per_s: float) -> str:
    """GFLOP/s to the unit (``1503``), or to two decimals below 10 (an emulated dtype's ``0.15``)."""
    gflops = flops_per_s / 1e9
    return f"{gflops:.0f}" if gflops >= 10 else f"{gflops:.2f}"


def memory_gb(device: torch.device) -> dict[str, float]:
    """Peak memory of this process: resident CPU memory, and the GPU's allocated memory on CUDA."""
    usage = {"cpu_mem_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # KiB on Linux
    if device.type == "cuda":
        usage["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return usage
