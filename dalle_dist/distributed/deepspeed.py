"""DeepSpeed (``deepspeed`` launcher or ``torchrun``): ZeRO 0-3, bf16 / fp16 / autocast, its own checkpoints.

The engine owns gradient accumulation, clipping, loss scaling and the optimizer's partitions. What the
rest of dalle_dist needs from it goes through ``DeepSpeedTrainingEngine``: full fp32 weights gathered from the
partitions (the portable checkpoint), DeepSpeed's own checkpoint files (resume), and a context that
gathers ZeRO-3 parameters so the root rank can draw samples.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import UserError
from .backend import BackendConfig, Precision, Template, TrainingEngine, ranks_text, root_copy
from .ddp import DDPBackend
from .elastic import init_process_group

TAG = "state"  # the one tag a checkpoint folder's engine files are saved under
ENGINE_FORMAT = "deepspeed"


def _deepspeed():
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would pick it anyway, with a warning
    try:
        import deepspeed
    except ImportError:
        raise UserError(
            "--deepspeed needs DeepSpeed: run `make install-dev` or `sh install_deepspeed.sh`"
        ) from None
    return deepspeed


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override``'s keys replacing its own, recursing into nested sections."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_file(path: Path) -> dict[str, Any]:
    """A ``--deepspeed_config`` file (DeepSpeed's own JSON format), read as data."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--deepspeed_config {path} does not exist") from None
    except ValueError as e:
        raise UserError(f"--deepspeed_config {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"--deepspeed_config {path} must hold a JSON object (DeepSpeed's config format)")
    if "scheduler" in data:
        raise UserError(
            f"--deepspeed_config {path} has a 'scheduler' section: dalle_dist sets the learning rate itself "
            "(--lr_schedule, --warmup_steps); remove the section"
        )
    return data


class _SafeLoading(contextlib.AbstractContextManager):
    """Make every ``torch.load`` inside (DeepSpeed's loaders ask for ``weights_only=False``) refuse
    pickled code: only tensors, plain containers and the three DeepSpeed classes its checkpoints hold."""

    def __enter__(self) -> None:
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        self._previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
        self._globals = torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address])
        self._globals.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._globals.__exit__(*exc)
        if self._previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = self._previous


@contextlib.contextmanager
def safe_loading() -> Iterator[None]:
    """For code that reads DeepSpeed checkpoint files without importing DeepSpeed itself (the DALLE-pytorch
    converter): inside, ``torch.load(..., weights_only=True)`` also accepts the few DeepSpeed classes those
    files hold (``_SafeLoading``'s, plus the dynamic loss scaler that fp16 runs pickle as well) and nothing
    else. Without DeepSpeed installed none can be allowed, so files that name them are refused."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # as _deepspeed(): no accelerator probing and warning
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler
    except ImportError:
        yield
        return
    with _SafeLoading(), torch.serialization.safe_globals([DynamicLossScaler]):
        yield


def convert_to_universal(source: str, target: str) -> None:
    """DeepSpeed's universal checkpoint of the engine files in ``source`` (loadable on any world size and
    ZeRO stage), written to ``target``; every file is read without running pickled code."""
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(
        input_folder=source,
        output_folder=target,
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # the marker Megatron-style trainers add; nothing else is missing
    )
    with _SafeLoading():
        ds_to_universal.main(args)


class DeepSpeedTrainingEngine(TrainingEngine):
    """A DeepSpeed engine stepped by the loop: it accumulates, clips, scales and steps by itself."""

    def __init__(
        self,
        engine: Any,
        frozen: dict[str, Tensor],
        buffers: dict[str, Tensor],
        description: dict[str, Any],
        template: Template | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(engine, engine.module, engine.optimizer, None, **kw)
        self.ds_engine = engine  # DeepSpeed's own
        # frozen weights (the VAE inside DALLE) never change, and bf16 / fp16 modes keep only a rounded copy
        # of them and of float buffers in the module: the export takes them from before the engine
        self.frozen, self.buffers = frozen, buffers
        self.description = description
        self.template = template

    def __post_init__(self) -> None:
        self.scaler = None  # the engine scales fp16 losses itself

    @property
    def input_dtype(self) -> torch.dtype | None:
        # bf16 / fp16 modes cast the module's weights, so its float inputs must follow (autocast needs not)
        if self.precision.name == "fp32" or self.precision.amp:
            return None
        return self.precision.dtype

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the engine's forward enters its torch_autocast section itself

    def micro_batch(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: Tensor) -> None:
        self.ds_engine.backward(loss)  # divides by the accumulation steps itself

    def step(self) -> bool:
        boundary = self.ds_engine.is_gradient_accumulation_boundary()
        self.ds_engine.step()
        self.micro_step += 1
        if boundary:
            norm = self.ds_engine.get_global_grad_norm()
            self.last_grad_norm = float(norm) if norm is not None else None
        return boundary

    def profiler(self, log: Callable[[str], None]) -> contextlib.AbstractContextManager:
        return _flops_profile(self.ds_engine, root=dist.get_rank() == 0)

    def full_state_dict(self) -> dict[str, Tensor]:
        from deepspeed.utils import safe_get_full_fp32_param

        params = dict(self.module.named_parameters(remove_duplicate=False))
        buffers = dict(self.module.named_buffers(remove_duplicate=False))
        gathered: dict[int, Tensor] = {}  # shared weights are gathered once
        weights: dict[str, Tensor] = {}
        for name in self.module.state_dict():  # cheap under ZeRO-3: partitions are not gathered
            if name in self.frozen:
                weights[name] = self.frozen[name]
            elif name in params:
                param = params[name]
                if id(param) not in gathered:
                    full = safe_get_full_fp32_param(param)  # collective: the fp32 master from every rank
                    gathered[id(param)] = (param if full is None else full).detach().float().cpu().clone()
                weights[name] = gathered[id(param)]
            elif name in buffers:
                weights[name] = self.buffers.get(name, buffers[name].detach().cpu().clone())
        return weights

    def sampling_module(self) -> contextlib.AbstractContextManager:
        if self.description["zero_stage"] != 3:  # every rank holds the whole module
            return contextlib.nullcontext(self.module)
        # the engine's hooks would partition a ZeRO-3 module again inside any forward pass: the root rank
        # samples from its plain copy instead
        weights = self.full_state_dict()
        return root_copy(self.template, weights, dist.get_rank() == 0, self.ds_engine.device)

    def describe(self) -> dict[str, Any]:
        return {"format": ENGINE_FORMAT, **self.description}

    def state_dict(self) -> dict[str, Any]:
        return {**self.describe(), "micro_step": self.micro_step}

    def save_engine(self, folder: Path) -> None:
        from deepspeed.checkpoint.constants import (
            UNIVERSAL_CHECKPOINT_INFO,
            UNIVERSAL_CHECKPOINT_VERSION_KEY,
            UNIVERSAL_CHECKPOINT_VERSION_VALUE,
        )

        # the universal-checkpoint marker lets the files be converted for a different world size later
        info = {
            UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}
        }
        self.ds_engine.save_checkpoint(str(folder), tag=TAG, client_state=info)

    def load_state(self, state: dict[str, Any], folder: Path) -> None:
        if state.get("format") != ENGINE_FORMAT:
            raise UserError(
                f"{folder.parent} was written without DeepSpeed (backend {state.get('backend', 'single')}): "
                "resume it with the backend it was trained with (drop --deepspeed), or start a new "
                "DeepSpeed run from its weights with --dalle_path / --vae_path"
            )
        if not (folder / TAG).is_dir():
            raise UserError(f"{folder} holds no DeepSpeed state (no {TAG}/): the checkpoint is damaged")
        world = dist.get_world_size()
        stage, saved_stage = self.description["zero_stage"], state.get("zero_stage")
        if stage != saved_stage and not (stage in (1, 2) and saved_stage in (1, 2)):
            raise UserError(
                f"{folder.parent} was trained with ZeRO-{saved_stage}: resume it with --zero_stage "
                f"{saved_stage} (DeepSpeed converts between stages 1 and 2 only)"
            )
        # ZeRO 1-3 partition the optimizer state by rank: another world size (or 1 <-> 2) needs a conversion
        universal = stage > 0 and (state.get("world_size") != world or stage != saved_stage)
        load_from = self._universal(folder, state) if universal else folder
        # DeepSpeed reads this switch when loading, not when the engine is built
        self.ds_engine._config.load_universal_checkpoint = universal
        try:
            with _SafeLoading():
                path, _ = self.ds_engine.load_checkpoint(
                    str(load_from), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=False
                )
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(
                f"refused to load the DeepSpeed state in {folder}: it holds more than tensors and plain data "
                f"({first})"
            ) from None
        finally:
            self.ds_engine._config.load_universal_checkpoint = False
        if universal:
            dist.barrier()
            if dist.get_rank() == 0:
                shutil.rmtree(load_from, ignore_errors=True)
        if path is None:
            raise UserError(f"DeepSpeed could not load its state from {load_from}: the checkpoint is damaged")
        self.micro_step = int(state.get("micro_step", 0))

    def _universal(self, folder: Path, state: dict[str, Any]) -> Path:
        """Convert the engine files to DeepSpeed's universal checkpoint (root rank; shared by all)."""
        stage, world = self.description["zero_stage"], dist.get_world_size()
        # next to the checkpoint, so that every node sees it
        target = folder.parent.with_name(f".universal-{folder.parent.name}")
        if dist.get_rank() == 0:
            print(
                f"resuming a {state.get('world_size')}-rank ZeRO-{state.get('zero_stage')} checkpoint on "
                f"{ranks_text(world)} with ZeRO-{stage}: converting it to DeepSpeed's universal format",
                flush=True,
            )
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            # a child process: the converter forks workers and prints a lot; its loads are kept safe too
            command = [
                sys.executable,
                "-c",
                "import sys; from dalle_dist.distributed.deepspeed import convert_to_universal; "
                "convert_to_universal(sys.argv[1], sys.argv[2])",
                str(folder / TAG),
                str(target / TAG),
            ]
            result = subprocess.run(command, capture_output=True, text=True)
            ok = result.returncode == 0
            if ok:
                (target / "latest").write_text(TAG)
        else:
            ok = True
        flag = torch.tensor([int(ok)], device=self.ds_engine.device)  # NCCL broadcasts GPU tensors only
        dist.broadcast(flag, src=0)
        if not flag.item():
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] if dist.get_rank() == 0 else []
            raise UserError(
                f"could not convert {folder} for {world} ranks ({' '.join(tail) or 'conversion failed'}): "
                f"resume on {ranks_text(state.get('world_size'))} with ZeRO-{state.get('zero_stage')}, or "
                "start a new run from the checkpoint's weights"
            )
        return target


def _offload_optimizer(
    optimizer: torch.optim.Optimizer, params: list[nn.Parameter], config: dict[str, Any]
) -> torch.optim.Optimizer:
    """With the optimizer state in CPU memory, DeepSpeed's vectorised CPU Adam steps it several times faster
    than torch's; it is used when install_deepspeed.sh prebuilt it (GPU machines), else torch's Adam."""
    from deepspeed.git_version_info import installed_ops

    if not installed_ops.get("cpu_adam") or not isinstance(optimizer, torch.optim.Adam):
        config["zero_force_ds_cpu_optimizer"] = False  # torch's Adam steps the CPU copy instead
        return optimizer
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    group = optimizer.param_groups[0]
    return DeepSpeedCPUAdam(
        params,
        lr=group["lr"],
        betas=group["betas"],
        eps=group["eps"],
        weight_decay=group["weight_decay"],
        adamw_mode=False,  # torch.optim.Adam's L2-style weight decay
    )


class DeepSpeedBackend(DDPBackend):
    """One process per device, started by ``deepspeed`` (or ``torchrun``) and run by a DeepSpeed engine."""

    name = "deepspeed"
    aliases = ()

    def __init__(self, device: str = "auto") -> None:
        super().__init__(device)
        self.zero_stage = 1
        self.cpu_offload = False
        self.file_config: dict[str, Any] = {}

    @classmethod
    def launched_here(cls) -> bool:
        # the deepspeed launcher (not torchrun) sets these next to RANK / WORLD_SIZE
        return "CROSS_RANK" in os.environ and "LOCAL_SIZE" in os.environ

    @dataclass(frozen=True)
    class Options:
        zero_stage: int = 1  # 1 partitions optimizer state, 2 also gradients, 3 also weights
        config_file: Path | None = None  # DeepSpeed JSON whose keys override the ones built from flags

    @classmethod
    def add_flags(cls, group: Any) -> None:
        group.add_argument(
            "--deepspeed",
            dest="use_deepspeed",
            action="store_true",
            help="same as --distributed_backend deepspeed",
        )
        group.add_argument(
            "--deepspeed_config",
            type=Path,
            default=None,
            help="DeepSpeed JSON config whose keys override the ones built from the flags",
        )
        group.add_argument(
            "--zero_stage",
            type=int,
            choices=(0, 1, 2, 3),
            default=1,
            help="DeepSpeed ZeRO stage: 1 partitions optimizer state, 2 also gradients, 3 also weights",
        )
        # the deepspeed launcher appends --local_rank=N to the script's arguments (LOCAL_RANK is read)
        group.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)

    @classmethod
    def options_from_flags(cls, args: Any) -> Options:
        return cls.Options(zero_stage=args.zero_stage, config_file=args.deepspeed_config)

    @classmethod
    def chosen_by_flag(cls, args: Any) -> str | None:
        return "--deepspeed" if getattr(args, "use_deepspeed", False) else None

    def configure(self, config: BackendConfig) -> BackendConfig:
        options = config.engine_options.get(self.name) or self.Options()
        self.zero_stage = options.zero_stage
        self.cpu_offload = config.cpu_offload
        if options.config_file is not None:
            self.file_config = read_config_file(options.config_file)
            zero = self.file_config.get("zero_optimization", {})
            if isinstance(zero, dict) and "stage" in zero:
                self.zero_stage = int(zero["stage"])
            # the file's batch settings win: the data loader must feed what the engine expects
            batch = {
                field: int(self.file_config[key])
                for field, key in (
                    ("batch_size", "train_micro_batch_size_per_gpu"),
                    ("ga_steps", "gradient_accumulation_steps"),
                )
                if key in self.file_config
            }
            config = replace(config, **batch)
        if self.cpu_offload and self.zero_stage == 0:
            raise UserError("--cpu_offload needs ZeRO stage 1, 2 or 3: add --zero_stage 2 (or 3)")
        return super().configure(config)

    def initialize(self) -> None:
        deepspeed = _deepspeed()
        if not self.launched_here() and not DDPBackend.launched_here():
            # one process without a launcher: a world of one, no MPI discovery
            os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"})
            os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        self._local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.device = self.pick_device(self._local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            if self._local_rank == 0:  # one process per machine clears what killed jobs left
                removed = remove_stale_shm_segments()
                if removed:
                    size = sum(size for _, size in removed) / 2**20
                    print(
                        f"removed {len(removed)} DeepSpeed shared-memory segments ({size:.0f} MB) in "
                        f"/dev/shm left by jobs killed before they started: "
                        f"{', '.join(p.name for p, _ in removed)}",
                        flush=True,
                    )
            comm = "nccl" if self.device.type == "cuda" else "gloo"
            if "TORCHELASTIC_RUN_ID" in os.environ:  # torchrun: meet as DDP does (DeepSpeed then joins)
                init_process_group(comm, timedelta(minutes=30))
            deepspeed.init_distributed(
                dist_backend=comm,
                auto_mpi_discovery=False,
                verbose=False,
                timeout=timedelta(minutes=30),
            )
            _release_shm_names()

    def build_config(
        self, micro_batch_size: int, ga_steps: int, clip_grad_norm: float | None, precision: Precision
    ) -> dict[str, Any]:
        """DeepSpeed's config from the flags, then ``--deepspeed_config`` on top."""
        config: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": micro_batch_size,
            "gradient_accumulation_steps": ga_steps,
            # DeepSpeed clips at 1.0 unless told otherwise; 0 turns clipping off
            "gradient_clipping": float(clip_grad_norm or 0.0),
            "zero_optimization": {"stage": self.zero_stage},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        if precision.name != "fp32":
            dtype = "bfloat16" if precision.name == "bf16" else "float16"
            if precision.amp:
                config["torch_autocast"] = {"enabled": True, "dtype": dtype}
            elif precision.name == "bf16":
                config["bf16"] = {"enabled": True}
            else:
                config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
        if self.cpu_offload:
            config["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
            if self.zero_stage == 3:
                config["zero_optimization"]["offload_param"] = {"device": "cpu"}
        return deep_merge(config, self.file_config)

    def distribute(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        *,
        ga_steps: int = 1,
        clip_grad_norm: float | None = None,
        precision: Precision | None = None,
        micro_batch_size: int = 1,
    ) -> TrainingEngine:
        deepspeed = _deepspeed()
        precision = precision or Precision("fp32", self.device)
        config = self.build_config(micro_batch_size, ga_steps, clip_grad_norm, precision)
        frozen = {
            n: p.detach().cpu().clone()
            for n, p in model.named_parameters(remove_duplicate=False)
            if not p.requires_grad
        }
        buffers = {}
        if config.get("bf16", {}).get("enabled") or config.get("fp16", {}).get("enabled"):
            buffers = {n: b.detach().cpu().clone() for n, b in model.named_buffers() if b.is_floating_point()}
        trainable = [p for p in model.parameters() if p.requires_grad]
        zero3 = config["zero_optimization"].get("stage") == 3
        # a plain copy of the model on the root rank, to draw samples from (see sampling_module)
        template = Template(model) if zero3 and self.rank == 0 else None
        own_optimizer = "optimizer" in config  # the file names DeepSpeed's optimizer: it replaces ours
        offload = config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
        if offload != "none" and not own_optimizer:
            optimizer = _offload_optimizer(optimizer, trainable, config)
        try:
            engine, _, _, _ = deepspeed.initialize(
                model=model,
                optimizer=None if own_optimizer else optimizer,
                model_parameters=trainable,
                config=config,
                dist_init_required=False,
            )
        except ValueError as e:
            if "not supported on your device" in str(e):
                raise UserError(
                    f"DeepSpeed: {e} Use --bf16 (or --amp) for mixed precision on this device"
                ) from None
            raise
        description = {
            "backend": self.name,
            "world_size": self.world_size,
            "zero_stage": int(engine.zero_optimization_stage()),
            "precision": precision.name,
        }
        return DeepSpeedTrainingEngine(
            engine,
            frozen,
            buffers,
            description,
            template,
            ga_steps=ga_steps,
            clip_grad_norm=clip_grad_norm,
            precision=precision,
        )


@contextlib.contextmanager
def _flops_profile(engine: Any, root: bool) -> Iterator[None]:
    """DeepSpeed's flops profiler (DALLE-pytorch's ``--flops_profiler``) around one step: its per-module
    table of parameters, forward FLOPs and latency, printed by the root rank."""
    from deepspeed.profiling.flops_profiler import FlopsProfiler

    profiler = FlopsProfiler(engine.module, ds_engine=engine)
    profiler.start_profile()
    try:
        yield
        profiler.stop_profile()
        if root:
            profiler.print_model_profile(profile_step=engine.global_steps, module_depth=-1, top_modules=3)
    finally:
        profiler.end_profile()


SHM_PREFIX = "deepspeed_allreduce_buffer_"


def remove_stale_shm_segments(
    folder: Path = Path("/dev/shm"), min_age_s: float = 60.0
) -> list[tuple[Path, int]]:
    """Remove this user's DeepSpeed all-reduce segments that no process maps and that are older than
    ``min_age_s`` (a job killed before ``_release_shm_names`` leaves them in RAM); returns them with
    their sizes. A live job's segment is mapped by its ranks, and a starting one's is young: both stay."""
    now = time.time()
    candidates = []
    for path in folder.glob(f"{SHM_PREFIX}{os.getuid()}_*"):
        try:
            info = path.stat()
        except OSError:
            continue
        if now - info.st_mtime > min_age_s:
            candidates.append((path, info.st_size))
    if not candidates:
        return []
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text(errors="replace")
        except OSError:  # a process that ended meanwhile, or another user's
            continue
        for line in text.splitlines():
            if SHM_PREFIX in line:
                mapped.add(line[line.index("/") :].removesuffix(" (deleted)"))
    removed = []
    for path, size in candidates:
        if str(path) not in mapped:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append((path, size))
    return removed


def _release_shm_names() -> None:
    """Unlink this rank's name of DeepSpeed's CPU all-reduce segment.

    DeepSpeed's shared-memory comm op gives every rank a ~66 MB segment in /dev/shm, named after the job,
    and never unlinks it: each CPU run left its segments in RAM, and a machine that ran many filled up
    (and then hung). ``init_distributed`` returns only after this rank has mapped every other rank's
    segment, so after a barrier every name may go; the mappings live on until the processes end."""
    if dist.get_world_size() < 2:
        return
    dist.barrier()
    address, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    name = Path("/dev/shm") / f"deepspeed_allreduce_buffer_{os.getuid()}_{address}_{port}_{dist.get_rank()}"
    name.unlink(missing_ok=True)
