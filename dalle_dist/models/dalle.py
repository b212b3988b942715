"""DALLE: a causal transformer over ``[bos, text tokens, image tokens]`` (Ramesh et al. 2021).

Keyword-compatible with DALLE-pytorch (the keywords become a ``DALLEConfig``). Text padding (0) becomes a
distinct token per position, so the model can tell "no word here" apart at every position; the image is
given as pixels (tokenised by the frozen VAE) or as token ids. How each layer's attention executes is the
attention planner's choice (``attention/planner.py``); sampling lives in ``sampling.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import AttentionPlanner, SequenceLayout, make_pattern
from . import sampling
from .blocks import blocks_of
from .dalle_config import DALLEConfig
from .kv_cache import KVCache
from .transformer import Rotary, TokenShift, Transformer

# how a checkpoint becomes a DALLE: set by dalle_dist.checkpoint, the layer that reads files (models never
# do), when the package is imported
_checkpoint_reader: Callable[[str | PathLike[str]], DALLE] | None = None


def register_checkpoint_reader(reader: Callable[[str | PathLike[str]], DALLE]) -> None:
    """Make ``reader`` (checkpoint folder or run directory -> DALLE) what ``DALLE.from_pretrained`` calls."""
    global _checkpoint_reader
    _checkpoint_reader = reader


class DALLE(nn.Module):
    """Text-to-image transformer over the tokens of a (frozen) discrete VAE.

    Built from a ``DALLEConfig`` or from DALLE-pytorch's keyword arguments (``DALLE(dim=512, vae=vae,
    depth=2, attn_types=("full", "axial_row"))``; see ``DALLEConfig`` for each of them).
    """

    def __init__(self, config: DALLEConfig | None = None, *, vae: nn.Module, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = DALLEConfig.from_kwargs(**kwargs)
        elif kwargs:
            raise TypeError(f"DALLE takes a config or keyword arguments, not both (got {sorted(kwargs)})")
        for name in ("image_size", "num_tokens", "num_layers"):
            if not hasattr(vae, name):
                raise TypeError(
                    f"vae must expose `{name}` (DiscreteVAE, VQGanVAE or OpenAIDiscreteVAE), got {vae!r}"
                )
        self.hparams = config
        self.tokenizer: Any = None  # the tokenizer it was trained with, when known (load_dalle sets it)
        self.vae = vae
        for p in self.vae.parameters():
            p.requires_grad_(False)

        fmap_size = vae.image_size // (2**vae.num_layers)
        self.text_seq_len = config.text_seq_len
        self.text_vocab_size = config.num_text_tokens  # the tokenizer's ids
        # DALLE-pytorch's layout adds one padding token per position and a begin token (id 0) before the
        # caption; a plain GPT's (text_pad_id) pads with one token of the vocabulary and has no begin token
        self.text_pad_id = config.text_pad_id
        self.plain_text = config.text_pad_id is not None
        self.num_text_tokens = config.num_text_tokens + (0 if self.plain_text else config.text_seq_len)
        self.num_image_tokens = vae.num_tokens
        self.total_tokens = self.num_text_tokens + self.num_image_tokens
        self.image_fmap_size = fmap_size
        self.image_seq_len = fmap_size * fmap_size
        self.layout = SequenceLayout(config.text_seq_len + (0 if self.plain_text else 1), fmap_size)
        self.total_seq_len = self.layout.total_len
        self.loss_img_weight, self.stable = config.loss_img_weight, config.stable
        self.share_input_output_emb = config.share_input_output_emb
        self.attn_types = config.attn_types
        patterns = {
            name: make_pattern(name, self.layout, config.attn_options.get(name))
            for name in dict.fromkeys(config.attn_types)
        }
        # training passes see every position but the last: that is the length plans are made for
        self.planner = AttentionPlanner(
            [patterns[name] for name in config.attn_types], self.total_seq_len - 1, config.attn_impl
        )

        dim = config.dim
        self.to_logits_norm = nn.LayerNorm(dim)
        self.separate_heads = config.separate_heads
        if config.separate_heads:  # a plain GPT's: one head per part, no biases
            self.text_head = nn.Linear(dim, self.num_text_tokens, bias=False)
            self.image_head = nn.Linear(dim, self.num_image_tokens, bias=False)
        else:
            self.to_logits = nn.Linear(dim, self.total_tokens)
        if not config.share_input_output_emb:
            self.text_emb = nn.Embedding(self.num_text_tokens, dim)
            self.image_emb = nn.Embedding(self.num_image_tokens, dim)
        self.rotary: Rotary | None = None
        if config.rotary_emb:
            self.rotary = Rotary(config.dim_head, self.layout.coordinates())
        else:
            self.text_pos_emb = nn.Embedding(self.layout.text_len, dim)
            self.axial_image_pos = config.image_pos_emb == "axial"
            if self.axial_image_pos:
                self.image_row_emb = nn.Embedding(fmap_size, dim)
                self.image_col_emb = nn.Embedding(fmap_size, dim)
            else:
                self.image_abs_pos_emb = nn.Embedding(self.image_seq_len, dim)

        self.transformer = Transformer(
            dim=dim,
            depth=config.depth,
            heads=config.heads,
            dim_head=config.dim_head,
            attn_dropout=config.attn_dropout,
            ff_dropout=config.ff_dropout,
            ff_mult=config.ff_mult,
            reversible=config.reversible,
            sandwich_norm=config.sandwich_norm,
            token_shift=TokenShift(self.layout) if config.shift_tokens else None,
            shared_attn_ids=config.shared_attn_ids,
            shared_ff_ids=config.shared_ff_ids,
            activation_checkpointing=config.activation_checkpointing,
            qkv_bias=config.qkv_bias,
            ff_activation=config.ff_activation,
        )

    def config(self) -> dict[str, Any]:
        """The hyper-parameters, JSON-serialisable, to rebuild this model (``DALLE(vae=..., **config)``)."""
        return self.hparams.to_dict()

    def blocks(self) -> list[nn.Module]:
        """The units ``--compile`` compiles and FSDP shards: the transformer's branches, and the VAE's blocks
        (it tokenizes each training batch's images)."""
        return [*self.transformer.blocks(), *blocks_of(self.vae)]

    # ----------------------------------------------------------------------------------- tokens
    def text_ids(self, text: Tensor) -> Tensor:
        """User text ``[B, <=S]`` (0 = padding) -> internal ids: ``[B, S + 1]``, bos and per-position pads,
        or in the plain layout ``[B, S]``, padding as ``text_pad_id``."""
        if text.dim() != 2:
            raise ValueError(f"text must be [batch, text_seq_len] token ids, got shape {tuple(text.shape)}")
        if text.shape[1] > self.text_seq_len:
            raise ValueError(
                f"text has {text.shape[1]} tokens but text_seq_len is {self.text_seq_len}: "
                "truncate the caption or build DALLE with a larger text_seq_len"
            )
        text = F.pad(text.long(), (0, self.text_seq_len - text.shape[1]))
        if text.numel() and int(text.max()) >= self.text_vocab_size:
            raise ValueError(
                f"text token id {int(text.max())} is outside the vocabulary of {self.text_vocab_size}: "
                "the tokenizer does not match num_text_tokens"
            )
        if self.plain_text:
            return text.masked_fill(text == 0, self.text_pad_id)
        pads = torch.arange(self.text_seq_len, device=text.device) + self.text_vocab_size
        text = torch.where(text == 0, pads, text)
        return F.pad(text, (1, 0), value=0)

    def null_text_token(self, position: int) -> int:
        """The internal id of padding at text ``position`` of the sequence (what a dropped caption holds)."""
        return self.text_pad_id if self.plain_text else self.text_vocab_size + position - 1

    def user_text(self, ids: Tensor) -> Tensor:
        """Internal text ids ``[B, n]`` (from position 0) -> user text, padding as 0 (``text_ids`` undone)."""
        if self.plain_text:
            return ids.masked_fill(ids == self.text_pad_id, 0)
        return ids[:, 1:].masked_fill(ids[:, 1:] >= self.text_vocab_size, 0)

    def image_ids(self, image: Tensor) -> Tensor:
        """Pixels ``[B, C, H, W]`` (tokenised by the VAE) or token ids ``[B, n]`` -> image token ids."""
        if image.dim() == 4 and image.is_floating_point():
            size = self.vae.image_size
            if image.shape[-2:] != (size, size):
                raise ValueError(f"images must be {size}x{size} for this VAE, got {tuple(image.shape[-2:])}")
            return self.vae.get_codebook_indices(image)
        if image.dim() != 2 or image.is_floating_point():
            raise ValueError(
                f"image must be pixels [B, C, H, W] or token ids [B, n], got {tuple(image.shape)}"
            )
        if image.shape[1] > self.image_seq_len:
            raise ValueError(f"got {image.shape[1]} image tokens, the model takes {self.image_seq_len}")
        return image.long()

    # ----------------------------------------------------------------------------------- the network
    def _embedding_weights(self) -> tuple[Tensor, Tensor]:
        """The token embedding tables of the text part and of the image part."""
        if self.share_input_output_emb:
            return self.to_logits.weight.split([self.num_text_tokens, self.num_image_tokens])
        return self.text_emb.weight, self.image_emb.weight

    def _image_position_emb(self, image_index: Tensor) -> Tensor:
        """Learned embeddings of image positions (without rotary embedding): a row's plus a column's, or
        one per position."""
        if not self.axial_image_pos:
            return self.image_abs_pos_emb(image_index)
        f = self.image_fmap_size
        return self.image_row_emb(image_index // f) + self.image_col_emb(image_index % f)

    def _embed(self, ids: Tensor, offset: int) -> Tensor:
        """Embed internal ids whose first position is ``offset`` (text part, then image part)."""
        t = self.layout.text_len
        n_text = min(max(t - offset, 0), ids.shape[1])
        text_w, image_w = self._embedding_weights()
        parts = []
        if n_text:
            emb = F.embedding(ids[:, :n_text], text_w)
            if self.rotary is None:
                emb = emb + self.text_pos_emb.weight[offset : offset + n_text]
            parts.append(emb)
        if n_text < ids.shape[1]:
            emb = F.embedding(ids[:, n_text:], image_w)
            if self.rotary is None:
                start = offset + n_text - t
                emb = emb + self._image_position_emb(
                    torch.arange(start, start + emb.shape[1], device=ids.device)
                )
            parts.append(emb)
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def hidden_states(self, ids: Tensor, offset: int = 0, cache: KVCache | None = None) -> Tensor:
        """The normalised last hidden states ``[B, n, D]`` of internal ids whose first position is
        ``offset``, reading and extending ``cache`` when given."""
        plans = self.planner.plans(ids.device)
        return self._output_norm(
            self.transformer(self._embed(ids, offset), plans, self.rotary, cache, offset)
        )

    def _output_norm(self, h: Tensor) -> Tensor:
        h = self.to_logits_norm(h)
        if self.stable:
            # bound the logits' scale for fp16 (DALLE-pytorch's DivideMax)
            h = h / h.abs().amax(dim=-1, keepdim=True).detach().clamp_min(1e-6)
        return h

    def decode_step(self, ids: Tensor, positions: Tensor, is_text: bool, cache: KVCache) -> Tensor:
        """The last hidden state ``[B, D]`` after token ``ids [B, 1]`` at ``positions [1]``: the
        fixed-shape form of one cached decode step, which ``torch.compile`` traces once (per part)."""
        text_w, image_w = self._embedding_weights()
        x = F.embedding(ids, text_w if is_text else image_w)
        if self.rotary is None:
            if is_text:
                x = x + self.text_pos_emb.weight[positions]
            else:
                x = x + self._image_position_emb(positions - self.layout.text_len)
        plans = self.planner.plans(ids.device)
        h = self.transformer(x, plans, self.rotary, cache, positions)
        return self._output_norm(h[:, -1])

    def _logit_weights(self) -> tuple[tuple[Tensor, Tensor | None], tuple[Tensor, Tensor | None]]:
        """``(weight, bias)`` of the text logits and of the image logits.

        One split for both, not two slices: backward then concatenates the parts' gradients instead of
        zero-filling a whole ``[total_tokens, dim]`` gradient per part."""
        if self.separate_heads:
            return (self.text_head.weight, None), (self.image_head.weight, None)
        sizes = [self.num_text_tokens, self.num_image_tokens]
        w_text, w_image = self.to_logits.weight.split(sizes)
        b_text, b_image = self.to_logits.bias.split(sizes)
        return (w_text, b_text), (w_image, b_image)

    def text_logits(self, h: Tensor) -> Tensor:
        """Scores of the text vocabulary (padding tokens included) from hidden states."""
        return F.linear(h, *self._logit_weights()[0])

    def image_logits(self, h: Tensor) -> Tensor:
        """Scores of the image codebook from hidden states."""
        return F.linear(h, *self._logit_weights()[1])

    # ----------------------------------------------------------------------------------- training
    def forward(
        self,
        text: Tensor,
        image: Tensor | None = None,
        mask: Tensor | None = None,
        return_loss: bool = False,
        null_cond_prob: float = 0.0,
        return_loss_parts: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """Logits ``[B, n, total_tokens]`` (positions may only predict tokens of their part), or the loss.

        ``mask`` is accepted for DALLE-pytorch compatibility and unused: padding has its own tokens.
        ``null_cond_prob`` drops the caption of that share of the batch (classifier-free guidance).
        With ``return_loss_parts`` the result is ``(loss, text_loss, image_loss)``.
        """
        del mask
        if null_cond_prob > 0:
            drop = torch.rand(text.shape[0], device=text.device) < null_cond_prob
            text = text.masked_fill(drop[:, None], 0)
        ids = self.text_ids(text)
        image_ids = None
        if image is not None:
            image_ids = self.image_ids(image)
            ids = torch.cat((ids, image_ids), dim=1)
        if return_loss and (image_ids is None or image_ids.shape[1] != self.image_seq_len):
            raise ValueError(f"the loss needs the whole image ({self.image_seq_len} tokens)")
        h = self.hidden_states(ids[:, : self.total_seq_len - 1])
        s = self.layout.text_len - 1  # the output at position p predicts token p + 1: text up to s - 1
        text_part, image_part = self._logit_weights()
        h_text, h_image = h.split([s, h.shape[1] - s], dim=1)
        if not return_loss:
            logits = h.new_full((*h.shape[:2], self.total_tokens), torch.finfo(h.dtype).min)
            logits[:, :s, : self.num_text_tokens] = F.linear(h_text, *text_part)
            logits[:, s:, self.num_text_tokens :] = F.linear(h_image, *image_part)
            return logits
        text_logits = F.linear(h_text, *text_part)
        loss_text = F.cross_entropy(text_logits.flatten(0, 1).float(), ids[:, 1 : s + 1].flatten())
        image_logits = F.linear(h_image, *image_part)
        loss_img = F.cross_entropy(image_logits.flatten(0, 1).float(), image_ids.flatten())
        loss = (loss_text + self.loss_img_weight * loss_img) / (self.loss_img_weight + 1)
        return (loss, loss_text, loss_img) if return_loss_parts else loss

    # ----------------------------------------------------------------------------------- sampling
    def generate_images(
        self,
        text: Tensor,
        *,
        mask: Tensor | None = None,
        clip: nn.Module | None = None,
        filter_thres: float = 0.5,
        temperature: float = 1.0,
        img: Tensor | None = None,
        num_init_img_tokens: int | None = None,
        cond_scale: float = 1.0,
        use_cache: bool = True,
        top_p: float = 1.0,
        compile: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Images ``[B, C, H, W]`` for captions ``text [B, <=S]``; with ``clip`` also its scores ``[B]``.

        ``filter_thres`` below 1 keeps the top ``1 - filter_thres`` share of the image tokens (DALLE-pytorch's
        meaning); a whole number from 1 up keeps that many (minDALL-E's ``top_k``, e.g. 256).
        ``img`` primes the first ``num_init_img_tokens`` image tokens (default 43.75 % of the image);
        ``cond_scale != 1`` applies classifier-free guidance against an empty caption. ``compile`` runs the
        decode step through ``torch.compile`` (the first call compiles: worth it for many images). ``mask``
        is accepted for DALLE-pytorch compatibility and unused.
        """
        del mask
        return sampling.generate_images(
            self,
            text,
            clip=clip,
            filter_thres=filter_thres,
            temperature=temperature,
            img=img,
            num_init_img_tokens=num_init_img_tokens,
            cond_scale=cond_scale,
            use_cache=use_cache,
            top_p=top_p,
            compile=compile,
        )

    def generate_texts(
        self,
        tokenizer: Any = None,
        text: str | None = None,
        *,
        filter_thres: float = 0.5,
        temperature: float = 1.0,
        top_p: float = 1.0,
        use_cache: bool = True,
        compile: bool = False,
    ) -> tuple[Tensor, list[str]]:
        """Continue ``text`` (or start afresh) to ``text_seq_len`` tokens: ``(tokens [1, S], [str])``.
        A model that knows its tokenizer (``self.tokenizer``, as ``load_dalle`` gives it) also takes
        ``generate_texts(text)``."""
        if isinstance(tokenizer, str) and text is None:  # generate_texts("a prompt")
            tokenizer, text = None, tokenizer
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is None:
            raise ValueError(
                "generate_texts needs the tokenizer: pass it (dalle.generate_texts(tokenizer, text)) or set "
                "dalle.tokenizer (load_dalle does)"
            )
        return sampling.generate_texts(
            self,
            tokenizer,
            text,
            filter_thres=filter_thres,
            temperature=temperature,
            top_p=top_p,
            use_cache=use_cache,
            compile=compile,
        )

    # ----------------------------------------------------------------------------------- published weights
    @classmethod
    def from_pretrained(cls, path: str | PathLike[str]) -> DALLE:
        """The DALL-E in a checkpoint folder or run directory (trained here, or converted by ``python -m
        dalle_dist.convert``, e.g. minDALL-E's 1.3B), with its VAE and its tokenizer (``model.tokenizer``),
        in eval mode on the CPU (``.to(device)`` to move it)."""
        if _checkpoint_reader is None:  # only when dalle_dist.models was loaded without its package
            raise RuntimeError(
                "DALLE.from_pretrained needs dalle_dist's checkpoint reader: import dalle_dist"
            )
        return _checkpoint_reader(path).eval()

    @torch.no_grad()
    def sampling(
        self,
        prompt: str,
        top_k: float = 256,
        top_p: float | None = None,
        softmax_temperature: float = 1.0,
        num_candidates: int = 96,
        batch_size: int | None = None,
    ) -> Tensor:
        """minDALL-E's sampling call: ``num_candidates`` images ``[N, C, H, W]`` in [0, 1] for one caption.

        ``prompt`` is read by ``self.tokenizer`` (``from_pretrained`` sets it; longer captions are cut to
        ``text_seq_len`` tokens, as minDALL-E's tokenizer cuts them); ``top_k`` a count of tokens kept (a
        share below 1, as ``generate_images``' ``filter_thres``); ``top_p`` the nucleus share after it
        (``None``: off); ``batch_size`` candidates per pass (default: all at once)."""
        if self.tokenizer is None:
            raise ValueError(
                "sampling(prompt) needs the model's tokenizer: load the model with "
                "DALLE.from_pretrained(path) or set model.tokenizer"
            )
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be one caption (a str), got {type(prompt).__name__}")
        if num_candidates < 1 or (batch_size is not None and batch_size < 1):
            raise ValueError(
                f"num_candidates and batch_size must be at least 1, got {num_candidates} and {batch_size}"
            )
        device = next(self.parameters()).device
        text = self.tokenizer.tokenize([prompt], self.text_seq_len, truncate_text=True).to(device)
        step = batch_size or num_candidates
        images = [
            self.generate_images(
                text.expand(min(step, num_candidates - start), -1),
                filter_thres=top_k,
                temperature=softmax_temperature,
                top_p=1.0 if top_p is None else top_p,
            )
            for start in range(0, num_candidates, step)
        ]
        return torch.cat(images)
