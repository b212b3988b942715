"""The quantizers a DiscreteVAE can put between its encoder and decoder, behind one interface.

- ``gumbel``: DALL-E's Gumbel-softmax over code logits mixing a learned codebook (Ramesh et al. 2021);
  DALLE-pytorch's, and the default.
- ``vq``: nearest-neighbour vector quantization with l2-normalised low-dimensional codes (ViT-VQGAN, Yu et
  al. 2021), EMA codebook updates, k-means initialisation and dead-code restarts.
- ``fsq``: finite scalar quantization (Mentzer et al. 2023): each of a few channels rounded to a fixed
  number of levels; the codebook is their product and has nothing to collapse.
- ``lfq``: lookup-free quantization (MAGVIT-v2, Yu et al. 2023): one sign bit a channel, with an entropy
  loss that spreads the codes.

The last three are vector-quantize-pytorch's modules; what is ours is the interface: every quantizer takes
the encoder's feature map ``[B, in_channels, h, w]`` and returns a ``Quantized`` (the decoder's input
``[B, dim, h, w]``, the code ids ``[B, h, w]`` and its auxiliary loss, already weighted), gives the ids
alone (``indices``, never updating anything) and turns ids back into the decoder's input (``lookup``).

How the EMA codebook trains across processes: each training forward all-reduces (sums) the per-code counts
and the per-code sums of the assigned vectors over every rank before the EMA step, so every rank applies the
update that one process would apply to the whole global batch; k-means initialisation and dead-code restarts
draw their vectors from all ranks' batches, chosen on rank 0, so the ranks' codebooks stay identical.
vector-quantize-pytorch does this whenever ``torch.distributed`` is initialised with more than one rank when
the quantizer is built (``sync_codebook``): build the model after the process group.
"""

from __future__ import annotations

import importlib.metadata
import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

QUANTIZERS = ("gumbel", "vq", "fsq", "lfq")

# Mentzer et al. 2023, Table 1: the levels recommended for a codebook of 2**bits codes
FSQ_LEVELS = {
    8: [8, 6, 5],
    10: [8, 5, 5, 5],
    12: [7, 5, 5, 5, 5],
    14: [8, 8, 8, 6, 5],
    16: [8, 8, 8, 5, 5, 5],
}


class Quantized(NamedTuple):
    codes: Tensor  # [B, dim, h, w]: what the decoder reads
    indices: Tensor  # [B, h, w] int64 code ids
    loss: Tensor  # 0-dim auxiliary loss, weighted (0 where the quantizer has none)


class GumbelQuantizer(nn.Embedding):
    """Gumbel-softmax over ``num_tokens`` logits, mixing the rows of this embedding (the codebook).

    An ``nn.Embedding`` so a DiscreteVAE keeps DALLE-pytorch's parameter name ``codebook.weight``."""

    kind = "gumbel"

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        temperature: float = 0.9,
        straight_through: bool = False,
        kl_div_loss_weight: float = 0.0,
    ) -> None:
        super().__init__(num_tokens, dim)
        self.in_channels, self.num_codes = num_tokens, num_tokens
        self.temperature, self.straight_through = temperature, straight_through
        self.kl_div_loss_weight = kl_div_loss_weight

    def forward(self, logits: Tensor, temperature: float | None = None) -> Quantized:  # type: ignore[override]
        soft = F.gumbel_softmax(
            logits, tau=temperature or self.temperature, dim=1, hard=self.straight_through
        )
        codes = torch.einsum("bnhw,nd->bdhw", soft, self.weight)
        ids = logits.detach().argmax(dim=1)
        if self.kl_div_loss_weight == 0:  # DALLE-pytorch's default: skip a log-softmax, its backward, x 0
            return Quantized(codes, ids, logits.new_zeros((), dtype=torch.float32))
        log_qy = F.log_softmax(logits, dim=1).permute(0, 2, 3, 1).reshape(-1, self.num_codes)
        log_uniform = torch.full_like(log_qy, -math.log(self.num_codes))
        # KL(q || uniform), averaged over code positions
        kl = F.kl_div(log_uniform, log_qy, log_target=True, reduction="batchmean")
        return Quantized(codes, ids, self.kl_div_loss_weight * kl)

    def indices(self, logits: Tensor) -> Tensor:
        return logits.argmax(dim=1)

    def lookup(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight).permute(0, 3, 1, 2)


class _Library(nn.Module):
    """A vector-quantize-pytorch module: ids never update it (it runs in eval mode for them)."""

    kind = ""
    module: nn.Module

    def forward(self, z: Tensor, temperature: float | None = None) -> Quantized:
        return Quantized(*self._run(z))

    def lookup(self, ids: Tensor) -> Tensor:
        return self.module.indices_to_codes(ids)

    def indices(self, z: Tensor) -> Tensor:
        was_training = self.module.training
        self.module.eval()
        try:
            return self._run(z)[1]
        finally:
            self.module.train(was_training)

    def _run(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError


SUPPORTED_LIBRARY = (1, 33)  # vector-quantize-pytorch below this; see setup.py


def _library() -> Any:
    import vector_quantize_pytorch
    from loguru import logger

    installed = importlib.metadata.version("vector-quantize-pytorch")
    if tuple(int(part) for part in installed.split(".")[:2]) >= SUPPORTED_LIBRARY:
        raise ImportError(
            f"vector-quantize-pytorch {installed} changed how dead codes are restarted; "
            "install the supported one: pip install 'vector-quantize-pytorch<1.33' (or pip install -e .)"
        )

    # its k-means warns (through loguru, on stderr) when a batch holds fewer vectors than codes; a small
    # first batch is expected here, and the codes it duplicates are restarted as dead codes later
    logger.disable("vector_quantize_pytorch")
    return vector_quantize_pytorch


class VectorQuantizer(_Library):
    """Nearest code by cosine similarity in a ``codebook_dim``-dimensional projection (l2-normalised codes),
    EMA updates with ``decay``, k-means initialisation on the first batch, and restarts of codes whose EMA
    count falls under ``dead_code_threshold`` (0: never) from the batch's vectors."""

    kind = "vq"

    def __init__(
        self,
        dim: int,
        num_codes: int,
        codebook_dim: int = 16,
        decay: float = 0.9,
        commitment_weight: float = 0.25,
        kmeans_init: bool = True,
        dead_code_threshold: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_channels, self.num_codes = dim, num_codes
        self.module = _library().VectorQuantize(
            dim=dim,
            codebook_size=num_codes,
            codebook_dim=codebook_dim,
            use_cosine_sim=True,
            decay=decay,
            commitment_weight=commitment_weight,
            kmeans_init=kmeans_init,
            threshold_ema_dead_code=dead_code_threshold,
            accept_image_fmap=True,
        )
        self.restarted = torch.zeros((), dtype=torch.long)
        codebook = self.module._codebook
        # counted where the library decides, so the figure is what it did, not a guess from outside
        codebook.expire_codes_ = _CountingExpiry(codebook, self)

    def _run(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        codes, ids, loss = self.module(z)
        return codes, ids, loss.reshape(())

    def lookup(self, ids: Tensor) -> Tensor:
        # the library's get_output_from_indices moves channels first before projecting out of image maps
        return self.module.project_out(self.module.codebook[ids]).permute(0, 3, 1, 2)


class _CountingExpiry:
    """The codebook's ``expire_codes_`` that first adds the number of codes it will restart to
    ``owner.restarted`` (a tensor, so counting never waits for a GPU). A plain object, not a closure, so a
    deep copy of the model points at the copy's codebook."""

    def __init__(self, codebook: nn.Module, owner: VectorQuantizer) -> None:
        self.codebook, self.owner = codebook, owner

    def __call__(self, batch_samples: Tensor, seq_mask: Tensor | None = None) -> None:
        cb = self.codebook
        if cb.training and cb.threshold_ema_dead_code > 0:
            dead = (cb.cluster_size < cb.threshold_ema_dead_code).sum(dim=-1)
            # with more dead codes than vectors in the batch it restarts as many as it has vectors
            per_codebook = batch_samples[0].numel() // batch_samples.shape[-1]
            count = dead.clamp(max=per_codebook).sum()
            self.owner.restarted = self.owner.restarted.to(count.device) + count
        type(cb).expire_codes_(cb, batch_samples, seq_mask)


class FiniteScalarQuantizer(_Library):
    """FSQ: ``len(levels)`` channels (projected from ``dim``) each bounded and rounded to its level count;
    ``prod(levels)`` codes, no codebook.

    ``symmetric``: levels placed symmetrically about 0 (an even count has no level at 0); ``noise_dropout``:
    the share of training values that get uniform noise of one level's width instead of rounding, so the
    decoder learns from the whole box, not only the grid points the encoder already reaches (both from
    Hansen-Estruch et al. 2025, "Learnings from Scaling Visual Tokenizers"; it needs ``symmetric``).
    Plain FSQ is ``symmetric=False, noise_dropout=0``.

    ``entropy_weight`` (ours; vector-quantize-pytorch's FSQ has no loss): the entropy loss LFQ uses
    (MAGVIT-v2), read on FSQ's grid. Each channel's distance to its levels gives soft level probabilities
    (softmax of -distance^2 / ``entropy_temperature``), a code's probability is their product, and the loss
    is the mean per-position entropy minus the entropy of the batch's mean code distribution: confident codes,
    many of them. FSQ cannot collapse, but on simple pictures (the built-in shapes) the encoder packs the
    patches into few grid cells; this term spreads them. The batch distribution is averaged over every rank
    under torch.distributed, as one process would see the global batch."""

    kind = "fsq"
    MAX_ENTROPY_CODES = 2**14  # the batch distribution holds positions x codes probabilities

    def __init__(
        self,
        dim: int,
        levels: list[int],
        symmetric: bool = False,
        noise_dropout: float = 0.0,
        entropy_weight: float = 0.0,
        entropy_temperature: float = 0.5,
    ) -> None:
        super().__init__()
        if noise_dropout and not symmetric:
            raise ValueError(
                "FSQ noise dropout needs symmetric levels: set fsq_symmetric or no noise dropout"
            )
        if not 0 <= noise_dropout < 1:
            raise ValueError(f"fsq_noise_dropout must be in [0, 1), got {noise_dropout}")
        if entropy_weight < 0 or entropy_temperature <= 0:
            raise ValueError("fsq_entropy_weight must be >= 0 and its temperature > 0")
        if entropy_weight and math.prod(levels) > self.MAX_ENTROPY_CODES:
            raise ValueError(
                f"fsq_entropy_weight works up to {self.MAX_ENTROPY_CODES} codes, fsq_levels {levels} make "
                f"{math.prod(levels)}: use fewer levels or fsq_entropy_weight 0"
            )
        self.in_channels, self.num_codes = dim, math.prod(levels)
        self.symmetric, self.entropy_weight, self.entropy_temperature = (
            symmetric,
            entropy_weight,
            entropy_temperature,
        )
        self.module = _library().FSQ(
            levels=list(levels), dim=dim, preserve_symmetry=symmetric, noise_dropout=noise_dropout
        )

    def _run(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        codes, ids = self.module(z)
        if self.entropy_weight and self.module.training and torch.is_grad_enabled():
            loss = self.entropy_weight * self.entropy_loss(z)
        else:
            loss = z.new_zeros((), dtype=torch.float32)
        return codes, ids.long(), loss

    def level_coordinates(self, z: Tensor) -> Tensor:
        """``[positions, channels]``: each projected channel's place on its levels' scale (level i at i), the
        value the library rounds to pick a level."""
        m = self.module
        x = m.project_in(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])).float()
        levels = m._levels.to(x)
        if self.symmetric:  # the library's floor((L - 1)(tanh x + 1) / 2 + 1/2)
            return (levels - 1) * (torch.tanh(x) + 1) / 2
        half = (levels - 1) * (1 + 1e-3) / 2  # the library's bound, shifted so that its levels are 0..L-1
        offset = torch.where(m._levels % 2 == 0, 0.5, 0.0).to(x)
        return torch.tanh(x + torch.atanh(offset / half)) * half - offset + torch.div(levels, 2).floor()

    def entropy_loss(self, z: Tensor) -> Tensor:
        """Mean per-position code entropy minus the entropy of the mean code distribution (nats)."""
        u = self.level_coordinates(z)
        per_position, joint = u.new_zeros(()), None
        for channel, count in enumerate(self.module._levels.tolist()):
            grid = torch.arange(count, device=u.device, dtype=u.dtype)
            logits = -((u[:, channel, None] - grid) ** 2) / self.entropy_temperature
            probs = logits.softmax(-1)
            per_position = per_position - (probs * logits.log_softmax(-1)).sum(-1).mean()
            # a code's probability: the product of its channels' (the entropy ignores the codes' order)
            joint = probs if joint is None else (joint[:, :, None] * probs[:, None, :]).flatten(1)
        average = joint.mean(0)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            if world > 1:  # the autograd-aware all-reduce: each rank's gradient reaches every rank's share
                import torch.distributed.nn.functional as dist_fn

                average = dist_fn.all_reduce(average) / world
        batch = -(average * average.clamp_min(1e-12).log()).sum()
        return per_position - batch


class LookupFreeQuantizer(_Library):
    """LFQ: ``bits`` channels (projected from ``dim``), each quantized to its sign; ``2**bits`` codes. The
    entropy loss (weight ``entropy_loss_weight``) asks each code to be confident and the batch to use many
    codes; the commitment loss keeps the encoder near its codes.

    The entropy reads code probabilities softmax(2 x . c / ``temperature``). An untrained encoder's
    projected values are ~0.02-0.2, and some bits have one sign on every position; at
    vector-quantize-pytorch's temperature 0.01 flipping such a bit costs ~400 |x| in logits, so the batch
    term's gradient on it is nil, it never flips, and half the codebook stays unused in some seeds
    (bench/RESULTS.md). At 0.3 (the default here) that gradient stays alive until the bits are balanced;
    0.1 still left a bit stuck in one seed, 1.0 makes codes less confident (fewer used)."""

    kind = "lfq"

    def __init__(
        self,
        dim: int,
        bits: int,
        entropy_loss_weight: float = 0.15,
        commitment_weight: float = 0.25,
        temperature: float = 0.3,
    ) -> None:
        super().__init__()
        self.in_channels, self.num_codes, self.temperature = dim, 2**bits, temperature
        self.module = _library().LFQ(
            dim=dim,
            codebook_size=2**bits,
            entropy_loss_weight=entropy_loss_weight,
            commitment_loss_weight=commitment_weight,
        )

    def _run(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        codes, ids, loss = self.module(z, inv_temperature=1.0 / self.temperature)
        return codes, ids, loss.reshape(())


def resolve_codebook(
    quantizer: str, num_tokens: int | None, fsq_levels: list[int] | None, lfq_bits: int | None
) -> tuple[int, list[int] | None, int | None]:
    """``(num_tokens, fsq_levels, lfq_bits)`` made consistent: FSQ's and LFQ's codebook size follows from
    their levels / bits; left out, those follow from ``num_tokens`` (a power of 2; FSQ's recommended levels
    for it give about that many codes). ``ValueError`` names a clash."""
    if quantizer not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {quantizer!r} (known: {', '.join(QUANTIZERS)})")
    if quantizer != "fsq" and fsq_levels is not None:
        raise ValueError(f"fsq_levels is for the fsq quantizer, not {quantizer}")
    if quantizer != "lfq" and lfq_bits is not None:
        raise ValueError(f"lfq_bits is for the lfq quantizer, not {quantizer}")
    if quantizer == "fsq":
        if fsq_levels is None:
            # the paper's levels for about num_tokens codes: their product is the codebook (8,5,5,5: 1 000)
            bits = math.log2(num_tokens) if num_tokens else 10
            if bits not in FSQ_LEVELS:
                sizes = ", ".join(str(2**b) for b in FSQ_LEVELS)
                raise ValueError(
                    f"no recommended FSQ levels for {num_tokens} codes: give fsq_levels, or {sizes}"
                )
            return math.prod(FSQ_LEVELS[int(bits)]), FSQ_LEVELS[int(bits)], None
        fsq_levels = [int(v) for v in fsq_levels]
        if not fsq_levels or min(fsq_levels) < 3:
            raise ValueError(f"fsq_levels must be integers >= 3 (e.g. 8,5,5,5), got {fsq_levels}")
        size = math.prod(fsq_levels)
        if num_tokens is not None and num_tokens != size:
            raise ValueError(
                f"num_tokens {num_tokens} does not match fsq_levels {fsq_levels} ({size} codes): "
                "give one of them"
            )
        return size, fsq_levels, None
    if quantizer == "lfq":
        if lfq_bits is None:
            n = num_tokens or 1024
            if n & (n - 1):
                raise ValueError(f"the lfq quantizer needs a power-of-2 num_tokens (2**lfq_bits), got {n}")
            lfq_bits = n.bit_length() - 1
        if not 1 <= lfq_bits <= 20:
            raise ValueError(f"lfq_bits must be in 1..20, got {lfq_bits}")
        if num_tokens is not None and num_tokens != 2**lfq_bits:
            raise ValueError(
                f"num_tokens {num_tokens} does not match lfq_bits {lfq_bits} ({2**lfq_bits} codes): "
                "give one of them"
            )
        return 2**lfq_bits, None, lfq_bits
    return (512 if num_tokens is None else num_tokens), None, None
