"""The interface the training loop talks to, whatever engine runs underneath.

A backend is configured by a ``BackendConfig`` (built once from the flags), knows its process group
(world size, ranks, barriers), how the data is split between ranks, and how a model is trained under it:
``distribute`` wraps model, optimizer and scheduler into a ``TrainingEngine`` whose ``backward`` / ``step``
do what the engine needs (gradient accumulation, clipping, averaging across ranks). The loop never
branches on the engine's name.
"""

from __future__ import annotations

import contextlib
import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..devices import cpu_computes_bf16
from ..errors import UserError

TORCH_FORMAT = "torch"  # optimizer state saved as torch state dicts (single, DDP, Horovod: interchangeable)


def ranks_text(n: int | None) -> str:
    """``1 rank`` / ``N ranks``, for messages."""
    return f"{n} rank" if n == 1 else f"{n} ranks"


@dataclass(frozen=True)
class NoOptions:
    """An engine without options of its own."""


@dataclass(frozen=True)
class BackendConfig:
    """How a run is distributed and computed: the engine (None: the launcher's, else single), the
    device, the per-rank micro-batch and accumulation, the precision flags, whether optimizer state goes
    to CPU memory, and each engine's own ``Options`` by engine name (``engine_options``)."""

    name: str | None = None
    device: str = "auto"
    batch_size: int = 1
    ga_steps: int = 1
    fp16: bool = False
    bf16: bool = False
    amp: bool = False
    cpu_offload: bool = False
    engine_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Precision:
    """``fp32``, ``bf16`` or ``fp16`` on ``device``; ``amp`` when asked for as ``--amp`` (engines with a
    mode of their own, like DeepSpeed's bf16, use it for ``--bf16`` / ``--fp16`` and autocast for amp).
    ``note``: a line for the log when the choice is not what the flags seem to say."""

    name: str
    device: torch.device
    amp: bool = False
    note: str = ""

    @staticmethod
    def from_flags(
        device: torch.device,
        *,
        fp16: bool = False,
        bf16: bool = False,
        amp: bool = False,
        cpu_bf16: bool | None = None,
    ) -> Precision:
        """DALLE-pytorch's ``--fp16`` and ``--amp`` plus ``--bf16``. ``--amp`` is mixed precision where it
        pays: fp16 on CUDA, bf16 on a CPU with bf16 arithmetic (``cpu_bf16``, probed when None), fp32 on
        other CPUs, which emulate bf16 many times slower (an explicit ``--bf16`` there is kept, noted)."""
        if fp16 and bf16:
            raise UserError(
                "--fp16 and --bf16 are both given: choose one (--bf16 on CPU and on Ampere or newer GPUs, "
                "--fp16 on older GPUs)"
            )
        if fp16 and device.type != "cuda":
            raise UserError(
                f"--fp16 needs a CUDA GPU (this run is on {device.type}): use --bf16 or --amp on CPU"
            )
        name = "bf16" if bf16 else "fp16" if fp16 else "fp32"
        emulated = device.type == "cpu" and name != "fp16" and (bf16 or amp)
        emulated = emulated and not (cpu_computes_bf16() if cpu_bf16 is None else cpu_bf16)
        if amp and name == "fp32":
            if emulated:
                note = (
                    "--amp: this CPU has no bf16 arithmetic (AVX512-BF16 or AMX), so training runs in fp32, "
                    "its fastest precision here (--bf16 forces bf16)"
                )
                return Precision("fp32", device, note=note)
            name = "fp16" if device.type == "cuda" else "bf16"
        note = ""
        if emulated:
            note = (
                "--bf16: this CPU has no bf16 arithmetic (AVX512-BF16 or AMX) and emulates it, several times "
                "slower than fp32: drop --bf16 (or use --amp, which picks fp32 here) unless bf16 is the point"
            )
        return Precision(name, device, amp=amp, note=note)

    @property
    def dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


class Template:
    """The root rank's blueprint of a partitioned model, to sample from: its structure on the meta device
    (no memory) and the non-persistent buffers that no state dict carries. A partitioned module gathers its
    weights inside every forward, a collective call, so one rank alone cannot run it: for samples the root
    builds a plain copy from the gathered weights, and drops it afterwards."""

    def __init__(self, model: nn.Module) -> None:
        kept = set(model.state_dict())
        self.buffers = {
            name: b.detach().cpu().clone() for name, b in model.named_buffers() if name not in kept
        }
        self.skeleton = copy.deepcopy(model).to("meta")

    def build(self, weights: dict[str, Tensor], device: torch.device) -> nn.Module:
        """A plain module with ``weights`` (the whole state dict) on ``device``, in eval mode."""
        module = copy.deepcopy(self.skeleton).to_empty(device="cpu")
        module.load_state_dict(weights)
        for name, value in self.buffers.items():
            owner, _, leaf = name.rpartition(".")
            module.get_submodule(owner)._buffers[leaf] = value.clone()
        return module.to(device).eval()


@contextlib.contextmanager
def root_copy(
    template: Template | None, weights: dict[str, Tensor], root: bool, device: torch.device
) -> Iterator[nn.Module | None]:
    """A plain copy of a partitioned model built from ``template`` and the gathered ``weights`` on
    ``device`` for the root rank to sample from; None on the other ranks."""
    if not root:
        yield None
        return
    yield template.build(weights, device)  # dropped with the caller's reference


@dataclass
class TrainingEngine:
    """A model ready to train under a backend.

    ``model`` is what the loop calls (maybe an engine wrapper); ``module`` is the plain ``nn.Module``
    whose weights are saved. ``step`` returns True when the optimizer actually stepped (after
    ``ga_steps`` micro-batches).
    """

    model: nn.Module
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ga_steps: int = 1
    clip_grad_norm: float | None = None
    precision: Precision = field(default_factory=lambda: Precision("fp32", torch.device("cpu")))
    micro_step: int = 0
    last_grad_norm: float | None = None

    def __post_init__(self) -> None:
        # fp16 overflows without loss scaling; bf16 has fp32's range and needs none
        self.scaler = (
            torch.amp.GradScaler(self.precision.device.type) if self.precision.name == "fp16" else None
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the forward pass runs in (mixed precision when asked for; weights stay fp32)."""
        return self.precision.autocast()

    @property
    def input_dtype(self) -> torch.dtype | None:
        """The dtype float inputs are cast to (engines that cast the weights); None keeps them as they are."""
        return None

    def micro_batch(self) -> contextlib.AbstractContextManager:
        """Context for one micro-batch's forward and backward: inside an accumulation window (not its
        last micro-batch) gradients stay local when the engine can defer its reduction (DDP ``no_sync``)."""
        last = (self.micro_step + 1) % self.ga_steps == 0
        no_sync = getattr(self.model, "no_sync", None)
        return no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()

    def backward(self, loss: Tensor) -> None:
        """Accumulate gradients of ``loss`` (scaled for accumulation, and for fp16)."""
        loss = loss / self.ga_steps
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self) -> bool:
        """Finish a micro-batch; on the last one of an accumulation window clip, step and zero grads."""
        self.micro_step += 1
        if self.micro_step % self.ga_steps != 0:
            return False
        self.reduce_gradients()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.clip_grad_norm:
            params = [p for p in self.module.parameters() if p.grad is not None]
            self.last_grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm))
        with self.stepping():
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        self.optimizer.zero_grad()  # set_to_none by default; Horovod's wrapper takes no arguments
        if self.scheduler is not None:
            self.scheduler.step()
        return True

    def reduce_gradients(self) -> None:
        """Finish the gradient reduction before clipping (engines that reduce inside the optimizer)."""

    def profiler(self, log: Callable[[str], None]) -> contextlib.AbstractContextManager | None:
        """The engine's own profiler around one training step (printing through ``log`` on the root rank),
        or None: the loop then uses torch's (``training/profiler.py``)."""
        return None

    def stepping(self) -> contextlib.AbstractContextManager:
        """Context of the optimizer step (e.g. telling the engine its reduction already happened)."""
        return contextlib.nullcontext()

    # ----------------------------------------------------------------- checkpoints (collective calls)
    def full_state_dict(self) -> dict[str, Tensor]:
        """The model's complete fp32 weights on every rank (engines that partition them gather here)."""
        return self.module.state_dict()

    @contextlib.contextmanager
    def sampling_module(self) -> Iterator[nn.Module | None]:
        """A collective context giving the root rank a plain module with all the trained weights, to draw
        samples from (engines that partition the weights assemble a copy); other ranks get None."""
        yield self.module

    def save_engine(self, folder: Path) -> None:
        """Write the engine's own checkpoint files into ``folder`` (engines that keep state outside torch)."""

    def load_state(self, state: dict[str, Any], folder: Path) -> None:
        """Restore what ``state_dict`` saved; ``folder`` holds what ``save_engine`` wrote."""
        saved = state.get("format", TORCH_FORMAT)
        if saved == "fsdp2-dcp":
            raise UserError(
                f"{folder.parent} was written by the fsdp backend (sharded): resume it with `torchrun "
                "--nproc_per_node N ... --distributed_backend fsdp --resume` (any N), or start a new run "
                "from its weights with --dalle_path / --vae_path"
            )
        if saved != TORCH_FORMAT:
            raise UserError(
                f"{folder.parent} was written by {saved} (ZeRO-{state.get('zero_stage')}, "
                f"{ranks_text(state.get('world_size'))}): resume it with --deepspeed under the launcher it "
                "ran with (e.g. `deepspeed --num_gpus N train_dalle.py --deepspeed ... --resume`), or start "
                "a new run from its weights with --dalle_path / --vae_path"
            )
        self.load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        """How the training state is stored (recorded in checkpoints; resuming checks it)."""
        return {"format": TORCH_FORMAT}

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, scheduler and loss-scaler state, for a training checkpoint."""
        return {
            **self.describe(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "micro_step": self.micro_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.micro_step = int(state.get("micro_step", 0))


class DistributedBackend(ABC):
    """One way of running training processes: a single process, DDP, Horovod or DeepSpeed.

    An engine is one module: its class, its ``Options`` (a frozen dataclass) and the flags that set them
    (``add_flags`` / ``options_from_flags``), plus its line in ``registry.BACKENDS``."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    engine_class: ClassVar[type[TrainingEngine]] = TrainingEngine
    Options: ClassVar[type] = NoOptions

    @classmethod
    def add_flags(cls, group: Any) -> None:
        """Declare the engine's own command-line flags on an argparse group (none by default)."""

    @classmethod
    def options_from_flags(cls, args: Any) -> Any:
        """The engine's ``Options`` from the flags ``add_flags`` declared."""
        return cls.Options()

    @classmethod
    def chosen_by_flag(cls, args: Any) -> str | None:
        """The flag of its own that asks for this engine, when given (DeepSpeed's ``--deepspeed``)."""
        return None

    def __init__(self, device: str = "auto") -> None:
        self.requested_device = device
        self.device = torch.device("cpu")
        self.config = BackendConfig(name=self.name, device=device)

    @classmethod
    def launched_here(cls) -> bool:
        """Does the environment show this engine's launcher started the process?"""
        return False

    @property
    def options(self) -> Any:
        """This engine's ``Options`` in its config."""
        return self.config.engine_options.get(self.name) or self.Options()

    def configure(self, config: BackendConfig) -> BackendConfig:
        """Take ``config`` (before ``initialize``); return what the engine will run, which its own settings
        may change (a DeepSpeed config file fixes the batch size): ``self.config`` afterwards."""
        self.config = config
        return config

    @abstractmethod
    def initialize(self) -> None:
        """Join the process group and pick this process's device."""

    @property
    @abstractmethod
    def world_size(self) -> int: ...

    @property
    @abstractmethod
    def rank(self) -> int: ...

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank."""

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Send a picklable object from ``src`` to every rank (e.g. the tokenizer the root trained)."""
        return obj

    def gather_rows(self, rows: Tensor) -> tuple[Tensor, int]:
        """Every rank's ``rows`` (equal shapes) concatenated in rank order, and where this rank's start.
        Differentiable: the gradient of each rank's part flows back to that rank, summed over the ranks
        that used it (a contrastive loss over the global batch)."""
        return rows, 0

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, in rank order, on every rank (small things: counts, names)."""
        return [obj]

    def average(self, value: Tensor) -> Tensor:
        """Mean of ``value`` across ranks, for logging."""
        return value

    def data_shard(self) -> tuple[int, int]:
        """``(shard index, number of shards)``: which part of every batch order this rank reads."""
        return self.rank, self.world_size

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """What the loop calls instead of ``model`` (e.g. a DDP wrapper); the model itself by default."""
        return model

    def wrap_optimizer(self, model: nn.Module, optimizer: torch.optim.Optimizer, ga_steps: int):
        """The optimizer the loop steps (e.g. Horovod's reducing wrapper); the optimizer itself by default."""
        return optimizer

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
        """Wrap model, optimizer and scheduler for training under this backend (``micro_batch_size`` is
        one rank's batch, for engines that want to know it)."""
        return self.engine_class(
            self.wrap_model(model),
            model,
            self.wrap_optimizer(model, optimizer, ga_steps),
            scheduler,
            ga_steps=ga_steps,
            clip_grad_norm=clip_grad_norm,
            precision=precision or Precision("fp32", self.device),
        )

    def same_on_all_ranks(self, weights: dict[str, Tensor]) -> bool:
        """Do all ranks hold bit-identical weights? (One integer per tensor compared, at the end of a run.)"""
        # the sum of each tensor's fp32 bit patterns: any differing bit changes it (unlike a float sum)
        sums = torch.stack(
            [
                p.detach().float().contiguous().view(torch.int32).to(torch.int64).sum()
                for p in weights.values()
                if p.is_floating_point()
            ]
        )
        low, high = self.min_max(sums)
        return bool(torch.equal(low, high))

    def min_max(self, value: Tensor) -> tuple[Tensor, Tensor]:
        """Element-wise minimum and maximum of ``value`` across ranks."""
        return value, value

    def shutdown(self) -> None:
        """Leave the process group."""

    def pick_device(self, local_rank: int = 0) -> torch.device:
        """``--device``: auto picks this rank's GPU when there is one, else the CPU."""
        requested = self.requested_device
        if requested == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda", local_rank % torch.cuda.device_count())
            return torch.device("cpu")
        if requested == "cuda" and not torch.cuda.is_available():
            raise UserError(
                "--device cuda was asked for but no CUDA GPU is visible: use --device cpu or auto"
            )
        if requested == "mps" and not torch.backends.mps.is_available():
            raise UserError("--device mps was asked for but MPS is not available: use --device cpu or auto")
        if requested == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device(requested)
