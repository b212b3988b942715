"""torchrun + PyTorch FSDP2 (``fully_shard``): weights, gradients and optimizer state sharded across ranks.

Each of the model's blocks (``blocks()``: DALL-E's transformer branches, the VAE's encoder and decoder) is
one FSDP unit, the root module another, so a block's weights are gathered only while it runs. Training
checkpoints go through ``torch.distributed.checkpoint`` (each rank writes its shard; a checkpoint loads on
any world size, DCP reshards it), beside the portable fp32 weights every backend writes. DCP keeps its
index as a pickle: it is read here by an unpickler that admits DCP's own metadata classes only, and every
stored object through ``torch.load(weights_only=True)``, so loading runs no code from the files.
"""

from __future__ import annotations

import contextlib
import io
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor

from ..errors import UserError
from ..models.blocks import blocks_of
from .backend import TORCH_FORMAT, Precision, Template, TrainingEngine, ranks_text, root_copy
from .ddp import DDPBackend

ENGINE_FORMAT = "fsdp2-dcp"


def local_shard(param: Tensor) -> Tensor:
    """The part of ``param`` this rank holds: its shard when FSDP sharded it, else the whole tensor."""
    return param.to_local() if isinstance(param, DTensor) else param


def shard_like(param: Tensor, whole: Tensor) -> Tensor:
    """This rank's part of ``whole`` (a tensor shaped like ``param``), cut as FSDP cut ``param``. Every rank
    holds ``whole``: each cuts its own part and nothing is sent."""
    if not isinstance(param, DTensor):
        return whole
    return distribute_tensor(whole, param.device_mesh, param.placements, src_data_rank=None).to_local()


def gather_like(param: Tensor, part: Tensor) -> Tensor:
    """The whole tensor from every rank's ``part``, cut as ``param`` is (a collective call when sharded)."""
    if not isinstance(param, DTensor):
        return part
    spec = {"shape": param.shape, "stride": param.stride()}
    return DTensor.from_local(part, param.device_mesh, param.placements, **spec).full_tensor()


@contextlib.contextmanager
def unsharded(module: nn.Module) -> Iterator[None]:
    """Inside, every FSDP unit of ``module`` holds its whole weights (a collective call): for code that
    calls the model's methods outside its forward, where FSDP would gather them. Elsewhere: nothing."""
    from torch.distributed.fsdp import FSDPModule

    units = [unit for unit in module.modules() if isinstance(unit, FSDPModule)]
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's index (``.metadata``): its dataclasses, torch sizes, dtypes and layouts, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = (
            module == "torch.distributed.checkpoint.metadata"
            or (module == "torch.distributed.checkpoint.filesystem" and name == "_StorageInfo")
            or (module == "torch.serialization" and name == "_get_layout")
            or (module == "torch" and name == "Size")
            or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))
            or (module == "pathlib" and name in ("PosixPath", "WindowsPath", "Path"))
        )
        if not allowed:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")
        return super().find_class(module, name)


def _safe_reader(folder: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            with open(Path(self.path) / ".metadata", "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(folder))


def _safe_planner() -> Any:
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._nested_dict import set_element

    class SafePlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            # the non-tensor items (optimizer hyper-parameters): plain data only
            loaded = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    return SafePlanner()


class FSDPTrainingEngine(TrainingEngine):
    """A ``fully_shard``-ed model: its parameters are DTensor shards; the optimizer steps the shards."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, template: Template | None,
                 description: dict[str, Any], mixed: bool, **kw: Any) -> None:  # fmt: skip
        super().__init__(model, model, optimizer, None, **kw)
        self.template, self.description, self.mixed = template, description, mixed

    def autocast(self) -> contextlib.AbstractContextManager:
        # bf16 is the FSDP policy's (weights gathered in bf16, gradients reduced in fp32): no autocast on top
        return contextlib.nullcontext() if self.mixed else self.precision.autocast()

    def micro_batch(self) -> contextlib.AbstractContextManager:
        last = (self.micro_step + 1) % self.ga_steps == 0
        self.model.set_requires_gradient_sync(last)  # inside an accumulation window gradients stay local
        return contextlib.nullcontext()

    def full_state_dict(self) -> dict[str, Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True))
        return {name: value.detach().cpu() for name, value in full.items()}

    def sampling_module(self) -> contextlib.AbstractContextManager:
        weights = self.full_state_dict()  # collective: every rank gathers
        return root_copy(self.template, weights, dist.get_rank() == 0, self.precision.device)

    def describe(self) -> dict[str, Any]:
        return {"format": ENGINE_FORMAT, **self.description}

    def state_dict(self) -> dict[str, Any]:
        return {**self.describe(), "micro_step": self.micro_step}

    def _sharded(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model, optimizer = get_state_dict(self.module, self.optimizer)
        return {"model": model, "optimizer": optimizer}

    def save_engine(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(self._sharded(), checkpoint_id=str(folder))  # every rank writes its shards

    def load_state(self, state: dict[str, Any], folder: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        if state.get("format", TORCH_FORMAT) != ENGINE_FORMAT:
            raise UserError(
                f"{folder.parent} was written by the {state.get('backend', 'single')} backend, not fsdp: "
                "resume it with that backend, or start a new fsdp run from its weights with --dalle_path / "
                "--vae_path"
            )
        if not (folder / ".metadata").is_file():
            raise UserError(f"{folder} holds no FSDP state (no .metadata): the checkpoint is damaged")
        target = self._sharded()
        try:
            # DCP reads each rank's part of every tensor, whatever world size wrote them (resharding)
            dcp.load(target, storage_reader=_safe_reader(folder), planner=_safe_planner())
        except pickle.UnpicklingError as e:
            raise UserError(f"refused to load the FSDP state in {folder}: {e}") from None
        set_state_dict(
            self.module,
            self.optimizer,
            model_state_dict=target["model"],
            optim_state_dict=target["optimizer"],
        )
        if state.get("world_size") != dist.get_world_size() and dist.get_rank() == 0:
            print(
                f"resuming a {ranks_text(state.get('world_size'))} FSDP checkpoint on "
                f"{ranks_text(dist.get_world_size())}: its shards were redistributed",
                flush=True,
            )
        self.micro_step = int(state.get("micro_step", 0))


class FSDPBackend(DDPBackend):
    """One process per device, started by ``torchrun``; FSDP2 shards the model (ZeRO-3's partitioning)."""

    name = "fsdp"
    aliases = ("fsdp2",)

    @classmethod
    def launched_here(cls) -> bool:
        return False  # torchrun's default engine stays DDP: FSDP is asked for by name

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
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        precision = precision or Precision("fp32", self.device)
        if precision.name == "fp16":
            raise UserError(
                "--distributed_backend fsdp trains in fp32 or bf16: use --bf16 (fp16 would need a sharded "
                "loss scaler)"
            )
        if self.config.cpu_offload and self.device.type == "cpu":
            raise UserError(
                "--cpu_offload moves FSDP's shards from the GPU to CPU memory; training on the CPU they are "
                "there already: drop --cpu_offload"
            )
        mixed = precision.name == "bf16"
        policy = (
            MixedPrecisionPolicy(
                param_dtype=torch.bfloat16, reduce_dtype=torch.float32, output_dtype=torch.float32
            )
            if mixed
            else MixedPrecisionPolicy()
        )
        offload = CPUOffloadPolicy() if self.config.cpu_offload else OffloadPolicy()
        template = Template(model) if self.rank == 0 else None
        # fully_shard replaces the parameters: the optimizer is rebuilt on the new ones, group for group
        names = {id(p): name for name, p in model.named_parameters()}
        groups = [
            {
                **{k: v for k, v in group.items() if k != "params"},
                "params": [names[id(p)] for p in group["params"]],
            }
            for group in optimizer.param_groups
        ]
        for block in blocks_of(model):
            fully_shard(block, mp_policy=policy, offload_policy=offload)
        fully_shard(model, mp_policy=policy, offload_policy=offload)
        params = dict(model.named_parameters())
        for group in groups:
            group["params"] = [params[name] for name in group["params"]]
        optimizer = type(optimizer)(groups)
        description = {
            "backend": self.name,
            "world_size": self.world_size,
            "precision": precision.name,
            "cpu_offload": bool(self.config.cpu_offload),
        }
        return FSDPTrainingEngine(
            model,
            optimizer,
            template=template,
            description=description,
            mixed=mixed,
            ga_steps=ga_steps,
            clip_grad_norm=clip_grad_norm,
            precision=precision,
        )
