"""What both trainers do around the loop: parse, pick the backend, prepare the run directory, build the
dataset, and turn bad input into one line and exit status 2."""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import Dataset

from ..data import DataError, FolderDataset
from ..data.sampler import split_indices
from ..distributed import DistributedBackend, Precision, backend_from_name
from ..errors import UserError
from ..text import CaptionTooLongError
from .checkpoint import Checkpoint, RunDirectory
from .loop import LoopSettings, Task, TrainingLoop
from .schedule import LRSchedule
from .tracking import start_tracking

DISK_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


def cli(main: Callable[[list[str] | None], Any]) -> Callable[[list[str] | None], int]:
    """Run ``main``; bad input becomes ``error: <message>`` on stderr and exit status 2 (no traceback)."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        where = launched_rank()
        try:
            main(argv)
        except (UserError, DataError, CaptionTooLongError) as e:
            print(f"error{where}: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(
                "interrupted: the last checkpoint is intact; rerun with --resume to continue", file=sys.stderr
            )
            return 130
        except Exception as e:
            if isinstance(e, OSError) and e.errno in DISK_ERRORS:
                # a full or read-only disk outside a checkpoint write (logs, samples): nothing is torn
                print(
                    f"error{where}: cannot write {e.filename or 'to disk'}: {e.strerror}: free disk space or "
                    "choose another --output, then rerun with --resume (the checkpoints written are intact)",
                    file=sys.stderr,
                )
                return 2
            if not where:
                raise
            # under a launcher, name the rank that failed: the others are ended by the launcher
            traceback.print_exc()
            print(f"error{where}: this rank failed ({type(e).__name__}: {e}); the job stops", file=sys.stderr)
            return 1
        return 0

    return wrapper


def launched_rank() -> str:
    """`` (rank R of N)`` when a launcher started several processes (torchrun / deepspeed set RANK,
    horovodrun HOROVOD_RANK or Open MPI's variable), else an empty string."""
    for rank, size in (
        ("RANK", "WORLD_SIZE"),
        ("HOROVOD_RANK", "HOROVOD_SIZE"),
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ):
        if rank in os.environ and int(os.environ.get(size, "1")) > 1:
            return f" (rank {os.environ[rank]} of {os.environ[size]})"
    return ""


def exit_with(code: int) -> None:
    """End the process with ``code`` and skip interpreter teardown, where engines' native threads have
    crashed after a finished run (DeepSpeed with gloo: exit 250), turning a success into a failure."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def start_backend(args: argparse.Namespace) -> DistributedBackend:
    # subnormal floats (e.g. Gumbel-softmax at low temperature) run ~10x slower on x86 CPUs
    torch.set_flush_denormal(True)
    if getattr(args, "use_deepspeed", False):
        if args.distributed_backend not in (None, "deepspeed"):
            raise UserError(
                f"--deepspeed and --distributed_backend {args.distributed_backend} name two engines: keep one"
            )
        args.distributed_backend = "deepspeed"
    backend = backend_from_name(args.distributed_backend, args.device)
    backend.configure(args)
    backend.initialize()
    return backend


def prepare_run(args: argparse.Namespace, script: str, backend: DistributedBackend) -> RunDirectory:
    """Pick and check ``--output``; the root rank writes the resolved flags and the command line."""
    if args.output is None:
        if args.resume:
            raise UserError("--resume needs --output naming the run directory to continue")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        args.output = Path("runs") / f"{script}-{stamp}"
    run = RunDirectory(args.output)
    if backend.is_root:
        run.prepare(resume=args.resume)
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "config"}
        name = "config.yaml" if not args.resume else f"config.resume-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
        (run.root / name).write_text(yaml.safe_dump(config, sort_keys=True), encoding="utf-8")
        with open(run.root / "command.txt", "a", encoding="utf-8") as f:
            f.write(shlex.join([sys.executable, *sys.argv]) + "\n")
        (run.root / "environment.yaml").write_text(
            yaml.safe_dump(environment(backend), sort_keys=False), encoding="utf-8"
        )
    backend.barrier()
    return run


def environment(backend: DistributedBackend) -> dict[str, Any]:
    """What ran this run: versions, devices, backend and world size (``environment.yaml``)."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version(), "torch": str(torch.__version__)}
    for package in ("dalle_dist", "deepspeed", "horovod", "webdataset", "tokenizers", "wandb", "tensorboard"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    devices: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        devices["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        devices["cuda_version"] = torch.version.cuda
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "versions": versions,
        "devices": devices,
        "backend": backend.name,
        "world_size": backend.world_size,
        "device": str(backend.device),
    }


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    torch.manual_seed(seed)


def build_dataset(
    args: argparse.Namespace,
    folder: str | Path | None,
    default_folder_size: int = 128,
    backend: DistributedBackend | None = None,
) -> Dataset:
    """Shards with ``--wds``, the folder dataset when a folder is given, else the built-in shapes. With a
    ``backend``, shards are counted on the root rank only."""
    from ..data import ShapesDataset
    from ..data.shards import Keys, ShardDataset, count_shards, resolve_shards

    if getattr(args, "wds", ""):
        if folder is None:
            raise UserError(
                "--wds needs --image_text_folder naming the shards (a .tar, folder, pattern or URL)"
            )
        if args.validation_fraction > 0:
            raise UserError("--validation_fraction is not supported with --wds yet: drop it")
        args.image_size = args.image_size or default_folder_size
        counted = None
        if backend is not None:
            counted = count_shards(resolve_shards(folder)) if backend.is_root else None
            counted = backend.broadcast_object(counted)
        return ShardDataset(
            folder,
            Keys.parse(args.wds, args.wds_caption_field),
            args.image_size,
            resize_ratio=args.random_resize_crop_lower_ratio,
            seed=args.seed,
            shuffle_buffer=args.shuffle_buffer,
            caption_limit=args.bpe_train_captions,
            resampled=args.wds_resampled,
            counted=counted,
        )
    if folder is not None:
        folder = Path(folder)
        if args.holdout:
            raise UserError("--holdout applies to the built-in dataset only: drop it or drop the folder flag")
        args.image_size = args.image_size or default_folder_size
        dataset = FolderDataset(
            folder,
            args.image_size,
            resize_ratio=args.random_resize_crop_lower_ratio,
            strict=args.strict_data,
            # token-cache runs train on stored tokens: their images are not decoded at this size
            check_size=getattr(args, "image_tokens", None) is None,
        )
        if backend is None or backend.is_root:
            report_skipped(dataset)
        return dataset
    args.image_size = args.image_size or 32
    try:
        return ShapesDataset(
            image_size=args.image_size, length=args.dataset_size, seed=args.seed, holdout=args.holdout
        )
    except ValueError as e:
        raise UserError(f"--holdout / --image_size: {e}") from None


def report_skipped(dataset: FolderDataset) -> None:
    """One line per kind of pair a folder dataset skipped, with the first few names (training goes on)."""
    skipped = {kind: paths for kind, paths in dataset.skipped.items() if paths}
    if not skipped:
        return
    total = sum(map(len, skipped.values()))
    print(
        f"data: skipped {total} of {total + len(dataset)} pairs in {dataset.root}, training on the "
        f"{len(dataset)} good ones (--strict_data stops instead)",
        flush=True,
    )
    for kind, paths in skipped.items():
        shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        print(f"data: skipped {len(paths)} {kind.replace('_', ' ')}: {shown}", flush=True)


def load_item(dataset: Dataset, index: int, rng) -> tuple[torch.Tensor, list[str]]:
    """``(image, captions)``; datasets with random augmentation draw it from ``rng``."""
    getter = getattr(dataset, "get", None)
    return getter(index, rng) if getter is not None else dataset[index]


def run_training(
    task: Task,
    args: argparse.Namespace,
    backend: DistributedBackend,
    run: RunDirectory,
    dataset: Dataset,
    resume: Checkpoint | None,
    epoch_decay: float = 1.0,
) -> Path | None:
    """Optimizer, engine wrapping, schedule and loop for ``task``; returns the ``final/`` checkpoint."""
    train_idx, val_idx = split_indices(len(dataset), args.validation_fraction, args.seed)
    params = [p for p in task.model.parameters() if p.requires_grad]
    # not fused=True: torch 2.13's fused CPU Adam measured ~10x slower than the default (for-each tensor)
    # update on this 2-core machine (14 M parameters: 650 ms vs 70 ms per step)
    optimizer = torch.optim.Adam(params, lr=args.learning_rate)
    precision = Precision.from_flags(backend.device, fp16=args.fp16, bf16=args.bf16, amp=args.amp)
    wrapped = backend.distribute(
        task.model,
        optimizer,
        ga_steps=args.ga_steps,
        clip_grad_norm=args.clip_grad_norm,
        precision=precision,
        micro_batch_size=args.batch_size,
    )
    schedule = LRSchedule(
        args.learning_rate,
        kind=args.lr_schedule or ("plateau" if getattr(args, "lr_decay", False) else "constant"),
        warmup_steps=args.warmup_steps,
        epoch_decay=epoch_decay,
    )
    settings = LoopSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        max_steps=args.max_steps,
        ga_steps=args.ga_steps,
        clip_grad_norm=args.clip_grad_norm,
        save_every_n_steps=args.save_every_n_steps,
        keep_n_checkpoints=args.keep_n_checkpoints,
        log_every=args.log_every,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        sample_every=args.sample_every,
        num_workers=args.num_workers,
        flops_profiler=args.flops_profiler,
        nonfinite_patience=args.nonfinite_patience,
    )
    tracking = start_tracking(args, run.root, backend.is_root)
    try:
        loop = TrainingLoop(
            task, backend, wrapped, schedule, run, settings, dataset, train_idx, val_idx, tracking
        )
        if resume is not None:
            loop.load_training_state(resume)
            if backend.is_root:
                where = f"step {loop.step} (epoch {loop.epoch}, batch {loop.batch_in_epoch})"
                tracking.log(f"resuming {run.root} at {where}")
        return loop.fit()
    finally:
        tracking.close()
