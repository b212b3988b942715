"""What every trainer does around the loop: start the backend, find the checkpoint ``--resume`` continues,
build the dataset, prepare the run directory, then run the loop."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ..checkpoint import Checkpoint, RunDirectory, resolve_latest
from ..data import DataConfig, Ranks, TrainingData, build_dataset
from ..data.sampler import split_indices
from ..distributed import BackendConfig, DistributedBackend, Precision, backend_from_config
from ..errors import UserError
from .flags import loop_settings
from .loop import TrainingLoop
from .schedule import LRSchedule
from .task import Task
from .tracking import start_tracking


def start_backend(config: BackendConfig) -> DistributedBackend:
    """The backend ``config`` names, joined to its process group; ``backend.config`` is what it runs."""
    # subnormal floats (e.g. Gumbel-softmax at low temperature) run ~10x slower on x86 CPUs
    torch.set_flush_denormal(True)
    backend = backend_from_config(config)
    backend.initialize()
    return backend


def resume_point(args: argparse.Namespace) -> Path | None:
    """The checkpoint ``--resume`` continues from (the run's latest), or None without ``--resume``."""
    if not args.resume:
        return None
    if args.output is None:
        raise UserError("--resume needs --output naming the run directory to continue")
    return resolve_latest(args.output)


def load_data(config: DataConfig, backend: DistributedBackend) -> TrainingData:
    """The dataset ``config`` describes; what every rank needs is read once, by the root rank."""
    return build_dataset(config, Ranks(backend.is_root, backend.broadcast_object))


def prepare_run(
    args: argparse.Namespace,
    script: str,
    backend: DistributedBackend,
    data: DataConfig,
    **resolved: Any,
) -> tuple[RunDirectory, dict[str, Any]]:
    """Pick and check ``--output``; the root rank writes the flags as the run resolved them (output, image
    size, batch shape, backend, and any ``resolved`` value), the command line and the environment.
    Returns the run directory and those flags."""
    output = args.output or Path("runs") / f"{script}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = RunDirectory(output)
    resolved = {
        "output": output,
        "image_size": data.image_size,
        "batch_size": backend.config.batch_size,
        "ga_steps": backend.config.ga_steps,
        "distributed_backend": backend.name,
        **resolved,
    }
    flags = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in {**vars(args), **resolved}.items()
        if k != "config"
    }
    if backend.is_root:
        run.prepare(resume=args.resume)
        name = "config.yaml" if not args.resume else f"config.resume-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
        (run.root / name).write_text(yaml.safe_dump(flags, sort_keys=True), encoding="utf-8")
        with open(run.root / "command.txt", "a", encoding="utf-8") as f:
            f.write(shlex.join([sys.executable, *sys.argv]) + "\n")
        (run.root / "environment.yaml").write_text(
            yaml.safe_dump(environment(backend), sort_keys=False), encoding="utf-8"
        )
    backend.barrier()
    return run, flags


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


def run_training(
    task: Task,
    args: argparse.Namespace,
    backend: DistributedBackend,
    run: RunDirectory,
    flags: dict[str, Any],
    dataset: TrainingData,
    resume: Checkpoint | None,
    epoch_decay: float = 1.0,
) -> Path | None:
    """Optimizer, engine, schedule and loop for ``task``; returns the ``final/`` checkpoint."""
    config = backend.config
    train_idx, val_idx = split_indices(len(dataset), args.validation_fraction, args.seed)
    params = [p for p in task.model.parameters() if p.requires_grad]
    # the default update, not fused=True: which is faster on a CPU depends on the host (bench/RESULTS.md,
    # "Executor choices on the CPU"), and changing it changes the arithmetic that resumes reproduce
    optimizer = torch.optim.Adam(params, lr=args.learning_rate)
    precision = Precision.from_flags(backend.device, fp16=config.fp16, bf16=config.bf16, amp=config.amp)
    engine = backend.distribute(
        task.model,
        optimizer,
        ga_steps=config.ga_steps,
        clip_grad_norm=args.clip_grad_norm,
        precision=precision,
        micro_batch_size=config.batch_size,
    )
    schedule = LRSchedule(
        args.learning_rate,
        kind=args.lr_schedule or ("plateau" if getattr(args, "lr_decay", False) else "constant"),
        warmup_steps=args.warmup_steps,
        epoch_decay=epoch_decay,
    )
    tracking = start_tracking(args, run.root, backend.is_root, flags)
    try:
        loop = TrainingLoop(
            task,
            backend,
            engine,
            schedule,
            run,
            loop_settings(args, config),
            dataset,
            train_idx,
            val_idx,
            tracking,
        )
        if resume is not None:
            loop.load_training_state(resume)
            if backend.is_root:
                where = f"step {loop.step} (epoch {loop.epoch}, batch {loop.batch_in_epoch})"
                tracking.log(f"resuming {run.root} at {where}")
        return loop.fit()
    finally:
        tracking.close()
