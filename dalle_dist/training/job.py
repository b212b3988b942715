"""What every trainer does around the loop: start the backend, find the checkpoint ``--resume`` continues,
build the dataset, prepare the run directory, then run the loop."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..checkpoint import Checkpoint, RunDirectory, resolve_latest
from ..cli import Flags, Parser, launched_rank
from ..data import DataConfig, Ranks, TrainingData, build_dataset
from ..data.sampler import split_indices
from ..distributed import BACKENDS, BackendConfig, DistributedBackend, Precision, backend_from_config
from ..errors import UserError
from .compile import compile_regions
from .compile import report as compile_report
from .flags import RUN_DEFINING, loop_settings, refuse_built_in_flags, refuse_changed_flags
from .loop import TrainingLoop
from .schedule import LRSchedule
from .task import Task
from .tracking import start_tracking

# flags that say how this process runs rather than what the run is: a resume takes them from its own
# command line only (the engines' own flags are added to these below)
PER_INVOCATION = {
    "output",
    "resume",
    "config",
    "device",
    "distributed_backend",
    "num_workers",
    "flops_profiler",
    "compile",
}


def parse_flags(parser: Parser, argv: list[str] | None = None) -> Flags:
    """A trainer's flags. With ``--resume`` the run continues as it was started: the flags it recorded
    (its newest ``config*.yaml``) stand beneath the command line, flags that define the run may not
    change (one line names those that differ), and the others (steps, logging, saving, learning rate...)
    may, with a note for the learning rate."""
    args = parser.parse(argv)
    if args.resume == "auto":
        args = args.replaced(resume=auto_resume(args))
    # before any model is loaded: the data flags contradict each other
    refuse_built_in_flags(
        args, getattr(args, "image_text_folder", None) or getattr(args, "image_folder", None)
    )
    if not args.resume or args.output is None:
        return args
    file, recorded = recorded_flags(RunDirectory(args.output))
    if file is None:
        return args
    per_invocation = PER_INVOCATION | engine_flag_names()
    beneath = {k: v for k, v in recorded.items() if k in parser.flag_names() - per_invocation}
    args = parser.parse(argv, beneath=beneath, source=str(file))
    inherited = parser.parse([], beneath=beneath, source=str(file))  # the recorded values, as parsed
    refuse_changed_flags(
        args,
        {name: getattr(inherited, name) for name in RUN_DEFINING if name in beneath},
        f"--resume continues {args.output} as it was started",
    )
    rate = "learning_rate"
    changed = args.given(rate) and rate in beneath and getattr(args, rate) != getattr(inherited, rate)
    if changed and (not launched_rank() or " (rank 0 " in launched_rank()):
        print(
            f"note: --learning_rate {getattr(args, rate)} replaces the run's {getattr(inherited, rate)} "
            "from the resumed step on (warmup and decay continue from the run's state)",
            flush=True,
        )
    return args


def auto_resume(args: Flags) -> bool:
    """``--resume auto``: whether ``--output`` has a checkpoint to continue from. Every rank reads the same
    folder at start-up, so all of them decide alike."""
    if args.output is None:
        raise UserError("--resume auto needs --output: the run directory to continue, or to start in")
    has_checkpoint = RunDirectory(args.output).latest() is not None
    if not launched_rank() or " (rank 0 " in launched_rank():
        print(
            f"--resume auto: {args.output} "
            + ("has a checkpoint: continuing it" if has_checkpoint else "has no checkpoint yet: starting it"),
            flush=True,
        )
    return has_checkpoint


def recorded_flags(run: RunDirectory) -> tuple[Path | None, dict[str, Any]]:
    """The flags a run recorded when it last started: its newest ``config.resume-*.yaml``, else its
    ``config.yaml``; ``(None, {})`` when it has neither."""
    resumes = sorted(run.root.glob("config.resume-*.yaml"))
    file = resumes[-1] if resumes else run.root / "config.yaml"
    if not file.is_file():
        return None, {}
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{file} is unreadable ({e}): the run directory is damaged") from None
    return file, data if isinstance(data, dict) else {}


def engine_flag_names() -> set[str]:
    """The flags the engines add (``--deepspeed``, ``--zero_stage``...): a launch's, not a run's."""
    scratch = argparse.ArgumentParser(add_help=False)
    for engine in BACKENDS.values():
        engine.add_flags(scratch)
    return {a.dest for a in scratch._actions}


def start_backend(config: BackendConfig) -> DistributedBackend:
    """The backend ``config`` names, joined to its process group; ``backend.config`` is what it runs."""
    # subnormal floats (e.g. Gumbel-softmax at low temperature) run ~10x slower on x86 CPUs
    torch.set_flush_denormal(True)
    backend = backend_from_config(config)
    backend.initialize()
    return backend


def resume_point(args: argparse.Namespace, backend: DistributedBackend) -> Path | None:
    """The checkpoint ``--resume`` continues from (the run's latest), or None without ``--resume``. The
    root rank takes the run's lock first: a run another process is writing is refused before it is read."""
    if not args.resume:
        return None
    if args.output is None:
        raise UserError("--resume needs --output naming the run directory to continue")
    if backend.is_root and Path(args.output).is_dir():
        hold_run(RunDirectory(args.output))
    return resolve_latest(args.output)


def hold_run(run: RunDirectory) -> None:
    """The run directory's lock, for this process (the root rank's); a taken-over lock is reported."""
    note = run.lock().describe_takeover()
    if note:
        print(note, flush=True)


def load_data(config: DataConfig, backend: DistributedBackend) -> TrainingData:
    """The dataset ``config`` describes; what every rank needs is read once, by the root rank."""
    return build_dataset(config, Ranks(backend.is_root, backend.broadcast_object))


def load_validation(
    args: argparse.Namespace, data: DataConfig, backend: DistributedBackend
) -> TrainingData | None:
    """``--wds_val``: validation shards read like the training shards (same keys), or None."""
    shards = getattr(args, "wds_val", "")
    if not shards:
        return None
    return load_data(dataclasses.replace(data, location=shards, resampled=False), backend)


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
    # every rank has read --output's state (a fine-tuning run refuses one that holds a run) before the root
    # writes into it: without this a slower rank could find the run the root has just begun
    backend.barrier()
    if backend.is_root:
        hold_run(run)  # held for the job, before anything in the run is written
        # --resume given but resolved to False: --resume auto found no checkpoint
        run.prepare(resume=args.resume, start_over_unsaved=args.given("resume") and not args.resume)
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


def adam(model: nn.Module, args: Flags) -> torch.optim.Optimizer:
    """Adam over ``model``'s trainable parameters. The default update, not fused=True: which is faster on a
    CPU depends on the host (bench/RESULTS.md, "Executor choices on the CPU"), and changing it changes the
    arithmetic that resumes reproduce."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=args.learning_rate, betas=(0.9, args.adam_beta2))


def run_training(
    task: Task,
    args: Flags,
    backend: DistributedBackend,
    run: RunDirectory,
    flags: dict[str, Any],
    dataset: TrainingData,
    resume: Checkpoint | None,
    epoch_decay: float = 1.0,
    validation: TrainingData | None = None,
) -> Path | None:
    """Optimizer, engine, schedule and loop for ``task``; returns the ``final/`` checkpoint."""
    config = backend.config
    train_idx, val_idx = split_indices(len(dataset), args.validation_fraction, args.seed)
    precision = Precision.from_flags(backend.device, fp16=config.fp16, bf16=config.bf16, amp=config.amp)
    if precision.note and backend.is_root:
        print(precision.note, flush=True)
    # the optimizer is handed over, not kept here: an engine that shards the model (FSDP) builds its own on
    # the shards, and a reference left here would keep every full-size parameter alive for the whole run
    engine = backend.distribute(
        task.model,
        adam(task.model, args),
        ga_steps=config.ga_steps,
        clip_grad_norm=args.clip_grad_norm,
        precision=precision,
        micro_batch_size=config.batch_size,
    )
    if args.compile:  # after the engine has wrapped or sharded the model (FSDP wants its units first)
        n = compile_regions(engine.module)
        if backend.is_root:
            print(f"--compile: {n} regions compiled on first use (the first steps take longer)", flush=True)
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
            validation,
        )
        if resume is not None:
            loop.load_training_state(resume)
            budget = ("max_steps", "epochs")
            if loop.step >= loop.total_steps and not any(args.given(flag) for flag in budget):
                raise UserError(
                    f"--resume: {run.root} has already trained the {loop.total_steps} steps it was started "
                    f"with (--max_steps {args.max_steps}, --epochs {args.epochs}): pass a larger --max_steps "
                    "or --epochs to train it further"
                )
            if backend.is_root:
                where = f"step {loop.step} (epoch {loop.epoch}, batch {loop.batch_in_epoch})"
                tracking.log(f"resuming {run.root} at {where}")
        final = loop.fit()
        if args.compile and backend.is_root:
            tracking.log(compile_report())
        return final
    finally:
        tracking.close()
        run.unlock()
