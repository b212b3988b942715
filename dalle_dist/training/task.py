"""``Task``: what a run trains. The loop is the same for every model; a task says what a sample is, what
the loss is, what a checkpoint holds and what progress pictures look like."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torch.utils.data import Dataset

from ..errors import UserError


class Task(ABC):
    """What a run trains: the model, how items become batches (the data layer's ``Samples``), the loss,
    and what a checkpoint holds."""

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

    def sample_from_key(
        self, dataset: Any, url: str, key: str, captions: list[str], rng: random.Random
    ) -> Any | None:
        """A stream's sample without decoding its image (e.g. cached image tokens), or None: decode it."""
        return None

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

    # figures besides the loss measured on each validation batch (``eval_figures``), averaged over the
    # batches and ranks like the loss and recorded as ``val_<name>``; ``eval_summary`` may add derived ones
    eval_figure_names: tuple[str, ...] = ()

    def eval_figures(self, model: nn.Module, batch: Any) -> Tensor:
        """The values of ``eval_figure_names`` on one validation batch, as a 1-dim tensor."""
        raise NotImplementedError

    def eval_summary(self, means: dict[str, float]) -> dict[str, float]:
        """Validation figures from their means over the batches (e.g. a PSNR from the mean squared error)."""
        return means

    def split_weights(
        self, weights: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
        """The trained module's full weights -> (the checkpoint's model weights, more safetensors files by
        name): a part trained beside the model but not of it (a discriminator) travels in its own file."""
        return weights, {}

    def after_step(self, step: int) -> None:
        """Called on every rank after each optimizer step (e.g. to update an average of the weights)."""

    def before_save(self, module: nn.Module) -> None:
        """Called on every rank before a checkpoint's weights are gathered: to refresh what is saved but not
        trained (e.g. a normalisation measured on pictures every rank holds alike)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
