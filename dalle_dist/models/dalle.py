"""DALLE: a causal transformer over ``[bos, text tokens, image tokens]`` (Ramesh et al. 2021).

Keyword-compatible with DALLE-pytorch. Text padding (0) becomes a distinct token per position, so the
model can tell "no word here" apart at every position; the image is given as pixels (tokenised by the
frozen VAE) or as token ids. Generation decodes one token per step against a per-layer key-value cache.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from itertools import cycle, islice
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import (
    PATTERNS,
    BandPlan,
    MaskSpec,
    SequenceLayout,
    band_plan,
    flex_available,
    flex_plan,
    make_pattern,
)
from .sampling import KVCache, sample, top_k_filter, top_p_filter
from .transformer import Rotary, TokenShift, Transformer


def _eval_mode(fn):
    """Run a generation method in eval mode and inference mode, restoring the mode afterwards.

    Inference mode (not just no_grad) trims the per-operation bookkeeping that dominates a decode step of
    small tensors; the results are cloned out of it so that callers may use them in autograd."""

    def wrapper(self, *args, **kwargs):
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                out = fn(self, *args, **kwargs)
            return _plain(out)
        finally:
            self.train(was_training)

    wrapper.__doc__, wrapper.__name__ = fn.__doc__, fn.__name__
    return wrapper


def _plain(value: Any) -> Any:
    """``value`` with its tensors copied out of inference mode."""
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value)
    return value


# how patterned layers run full passes: "flex" is FlexAttention with the pattern's block mask (Triton
# kernels on a GPU: what "auto" picks there), "structured" computes only the pattern's band (see
# attention/kernels.py), "dense" masks a full score matrix. On a CPU "auto" picks the faster of the last two
# measured (bench/attention_layers.py): the band from these image sizes on, dense below them and for
# `sparse` (its global keys make the band wide: the materialised scores cost more than the flash kernel saves)
ATTN_IMPLS = ("auto", "flex", "structured", "dense")
_AUTO_MIN_IMAGE_LEN = {"axial_row": 256, "axial_col": 256, "conv_like": 1024}


def _structured(attn_impl: str, pattern: Any) -> bool:
    if attn_impl == "auto":
        return pattern.layout.image_len >= _AUTO_MIN_IMAGE_LEN.get(pattern.name, float("inf"))
    return attn_impl == "structured"


class DALLE(nn.Module):
    """Text-to-image transformer over the tokens of a (frozen) discrete VAE."""

    def __init__(
        self,
        *,
        dim: int,
        vae: nn.Module,
        num_text_tokens: int = 10000,
        text_seq_len: int = 256,
        depth: int,
        heads: int = 8,
        dim_head: int = 64,
        reversible: bool = False,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        sparse_attn: bool | Sequence[bool] = False,
        attn_types: str | Sequence[str] | None = None,
        loss_img_weight: float = 7,
        stable: bool = False,
        sandwich_norm: bool = False,
        shift_tokens: bool = True,
        rotary_emb: bool = True,
        shared_attn_ids: int | Sequence[int] | None = None,
        shared_ff_ids: int | Sequence[int] | None = None,
        share_input_output_emb: bool = False,
        optimize_for_inference: bool = False,
        ff_mult: int = 4,
        conv_kernel_size: int = 5,
        conv_dilation: int = 1,
        sparse_block_size: int = 16,
        sparse_local_blocks: int = 4,
        sparse_global_stride: int = 4,
        attn_impl: str = "auto",
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        # the constructor arguments (taken before any other local exists) rebuild this model from a checkpoint
        self._config = {k: v for k, v in locals().items() if k not in ("self", "vae", "__class__")}
        for name in ("image_size", "num_tokens", "num_layers"):
            if not hasattr(vae, name):
                raise TypeError(
                    f"vae must expose `{name}` (DiscreteVAE, VQGanVAE or OpenAIDiscreteVAE), got {vae!r}"
                )
        if text_seq_len < 1:
            raise ValueError(f"text_seq_len must be positive, got {text_seq_len}")
        self._config["attn_types"] = list(self._layer_attn_types(attn_types, sparse_attn, depth))
        self._config.pop("sparse_attn")
        for key in ("shared_attn_ids", "shared_ff_ids"):
            if isinstance(self._config[key], Sequence):
                self._config[key] = list(self._config[key])

        self.vae = vae
        for p in self.vae.parameters():
            p.requires_grad_(False)

        fmap_size = vae.image_size // (2**vae.num_layers)
        self.text_seq_len = text_seq_len
        self.num_text_tokens_input = num_text_tokens  # the tokenizer's vocabulary
        self.num_text_tokens = num_text_tokens + text_seq_len  # plus one padding token per position
        self.num_image_tokens = vae.num_tokens
        self.total_tokens = self.num_text_tokens + self.num_image_tokens
        self.image_fmap_size = fmap_size
        self.image_seq_len = fmap_size * fmap_size
        self.layout = SequenceLayout(text_seq_len + 1, fmap_size)
        self.total_seq_len = self.layout.total_len
        self.loss_img_weight, self.stable = loss_img_weight, stable
        self.share_input_output_emb = share_input_output_emb

        # attention patterns: dense masks as non-persistent buffers so they follow .to(device)
        self.attn_types = tuple(self._config["attn_types"])
        options = {
            "kernel_size": conv_kernel_size,
            "dilation": conv_dilation,
            "block_size": sparse_block_size,
            "local_blocks": sparse_local_blocks,
            "global_stride": sparse_global_stride,
        }
        self.patterns = {
            name: make_pattern(name, self.layout, **options) for name in dict.fromkeys(self.attn_types)
        }
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {', '.join(ATTN_IMPLS)}, got {attn_impl!r}")
        self.attn_impl = attn_impl
        self._plans: dict[str, BandPlan] = {}
        for name, pattern in self.patterns.items():
            if name != "full":
                self.register_buffer(f"mask_{name}", pattern.dense_mask(), persistent=False)
            # training passes see every position but the last: that length gets the structured plan
            plan = band_plan(pattern, self.total_seq_len - 1) if _structured(attn_impl, pattern) else None
            if plan is not None:
                self._plans[name] = plan  # its tensors as buffers, so that they follow .to(device)
                self.register_buffer(f"plan_{name}_global_keys", plan.global_keys, persistent=False)
                self.register_buffer(f"plan_{name}_mask", plan.mask, persistent=False)

        self.to_logits_norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, self.total_tokens)
        if not share_input_output_emb:
            self.text_emb = nn.Embedding(self.num_text_tokens, dim)
            self.image_emb = nn.Embedding(self.num_image_tokens, dim)
        self.rotary: Rotary | None = None
        if rotary_emb:
            self.rotary = Rotary(dim_head, self._rotary_coords())
        else:
            self.text_pos_emb = nn.Embedding(self.layout.text_len, dim)
            self.image_row_emb = nn.Embedding(fmap_size, dim)
            self.image_col_emb = nn.Embedding(fmap_size, dim)

        self.transformer = Transformer(
            dim=dim,
            depth=depth,
            heads=heads,
            dim_head=dim_head,
            attn_dropout=attn_dropout,
            ff_dropout=ff_dropout,
            ff_mult=ff_mult,
            reversible=reversible,
            sandwich_norm=sandwich_norm,
            token_shift=TokenShift(self.layout) if shift_tokens else None,
            shared_attn_ids=shared_attn_ids,
            shared_ff_ids=shared_ff_ids,
            activation_checkpointing=activation_checkpointing,
        )

    # ----------------------------------------------------------------------------------------- set-up
    @staticmethod
    def _layer_attn_types(
        attn_types: str | Sequence[str] | None, sparse_attn: bool | Sequence[bool], depth: int
    ) -> tuple[str, ...]:
        if attn_types is None:
            sparse = sparse_attn if isinstance(sparse_attn, Sequence) else (sparse_attn,)
            attn_types = tuple("sparse" if s else "full" for s in sparse)
        elif isinstance(attn_types, str):
            attn_types = (attn_types,)
        if len(attn_types) == 0:
            raise ValueError("attn_types must name at least one attention type")
        for name in attn_types:
            if name not in PATTERNS:
                raise ValueError(f"unknown attention type {name!r}: choose from {', '.join(PATTERNS)}")
        return tuple(islice(cycle(attn_types), depth))

    def _rotary_coords(self) -> Tensor:
        """Per position: (text index, image row, image column); other parts' axes held constant."""
        t, f = self.layout.text_len, self.layout.fmap_size
        pos = torch.arange(self.layout.total_len)
        img = (pos - t).clamp(min=0)
        is_img = pos >= t
        text_axis = torch.where(is_img, torch.full_like(pos, t), pos)
        row = torch.where(is_img, img // f, torch.full_like(pos, -1))
        col = torch.where(is_img, img % f, torch.full_like(pos, -1))
        return torch.stack((text_axis, row, col), dim=1)

    def config(self) -> dict[str, Any]:
        """Constructor arguments except the VAE, JSON-serialisable, to rebuild this model."""
        return dict(self._config)

    def _apply(self, fn, *args, **kwargs):
        self._mask_specs = None  # .to() / .half() replace the mask buffers the cached specs hold
        return super()._apply(fn, *args, **kwargs)

    def mask_specs(self) -> list[MaskSpec]:
        """One mask spec per layer, from the layer's attention pattern (built once: every training and
        decode step asks for them)."""
        if getattr(self, "_mask_specs", None) is None:
            self._mask_specs = self._build_mask_specs()
        return self._mask_specs

    def _build_mask_specs(self) -> list[MaskSpec]:
        specs = {}
        for name in self.patterns:
            if name == "full":
                specs[name] = MaskSpec(causal=True)
                continue
            mask = getattr(self, f"mask_{name}")
            if self.attn_impl == "flex" or (self.attn_impl == "auto" and flex_available(mask.device)):
                flex = flex_plan(self.patterns[name], self.total_seq_len - 1, mask.device)
                specs[name] = MaskSpec(pattern=mask, flex=flex)
                continue
            plan = self._plans.get(name)
            if plan is not None:
                plan = plan.with_tensors(
                    getattr(self, f"plan_{name}_global_keys"), getattr(self, f"plan_{name}_mask")
                )
            specs[name] = MaskSpec(pattern=getattr(self, f"mask_{name}"), plan=plan)
        return [specs[name] for name in self.attn_types]

    # ----------------------------------------------------------------------------------- tokens
    def text_ids(self, text: Tensor) -> Tensor:
        """User text ``[B, <=S]`` (0 = padding) -> internal ids ``[B, S + 1]``: bos, per-position pads."""
        if text.dim() != 2:
            raise ValueError(f"text must be [batch, text_seq_len] token ids, got shape {tuple(text.shape)}")
        if text.shape[1] > self.text_seq_len:
            raise ValueError(
                f"text has {text.shape[1]} tokens but text_seq_len is {self.text_seq_len}: "
                "truncate the caption or build DALLE with a larger text_seq_len"
            )
        text = F.pad(text.long(), (0, self.text_seq_len - text.shape[1]))
        if text.numel() and int(text.max()) >= self.num_text_tokens_input:
            raise ValueError(
                f"text token id {int(text.max())} is outside the vocabulary of {self.num_text_tokens_input}: "
                "the tokenizer does not match num_text_tokens"
            )
        pads = torch.arange(self.text_seq_len, device=text.device) + self.num_text_tokens_input
        text = torch.where(text == 0, pads, text)
        return F.pad(text, (1, 0), value=0)

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

    def _embedding_weights(self) -> tuple[Tensor, Tensor]:
        """The token embedding tables of the text part and of the image part."""
        if self.share_input_output_emb:
            return self.to_logits.weight.split([self.num_text_tokens, self.num_image_tokens])
        return self.text_emb.weight, self.image_emb.weight

    def _image_position_emb(self, image_index: Tensor) -> Tensor:
        """Learned row + column embeddings of image positions (without rotary embedding)."""
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

    def _hidden(self, ids: Tensor, offset: int = 0, cache: KVCache | None = None) -> Tensor:
        h = self.transformer(self._embed(ids, offset), self.mask_specs(), self.rotary, cache, offset)
        return self._output_norm(h)

    def _output_norm(self, h: Tensor) -> Tensor:
        h = self.to_logits_norm(h)
        if self.stable:
            # bound the logits' scale for fp16 (DALLE-pytorch's DivideMax)
            h = h / h.abs().amax(dim=-1, keepdim=True).detach().clamp_min(1e-6)
        return h

    def _decode_step(self, ids: Tensor, positions: Tensor, is_text: bool, cache: KVCache) -> Tensor:
        """The last hidden state ``[B, D]`` after token ``ids [B, 1]`` at ``positions [1]``: the
        fixed-shape form of one cached decode step that ``torch.compile`` traces once (per part)."""
        text_w, image_w = self._embedding_weights()
        x = F.embedding(ids, text_w if is_text else image_w)
        if self.rotary is None:
            if is_text:
                x = x + self.text_pos_emb.weight[positions]
            else:
                x = x + self._image_position_emb(positions - self.layout.text_len)
        h = self.transformer(x, self.mask_specs(), self.rotary, cache, positions)
        return self._output_norm(h[:, -1])

    def _compiled_decode_step(self) -> Callable[..., Tensor]:
        """``_decode_step`` of this model through ``torch.compile``. One compiled function serves every
        model (not one kept per instance, which a copy of the model would share with its original): torch
        recompiles only for another architecture, batch size, dtype or device."""
        return functools.partial(_compiled_decode_step(), self)

    def _logit_weights(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """``(weight, bias)`` of the text logits and of the image logits.

        One split for both, not two slices: backward then concatenates the parts' gradients instead of
        zero-filling a whole ``[total_tokens, dim]`` gradient per part."""
        sizes = [self.num_text_tokens, self.num_image_tokens]
        w_text, w_image = self.to_logits.weight.split(sizes)
        b_text, b_image = self.to_logits.bias.split(sizes)
        return (w_text, b_text), (w_image, b_image)

    def _text_logits(self, h: Tensor) -> Tensor:
        return F.linear(h, *self._logit_weights()[0])

    def _image_logits(self, h: Tensor) -> Tensor:
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
        h = self._hidden(ids[:, : self.total_seq_len - 1])
        s = self.text_seq_len  # the output at position p predicts token p + 1: text up to s - 1
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
    def _sample_sequence(
        self,
        ids: Tensor,
        end: int,
        *,
        filter_thres: float,
        temperature: float,
        top_p: float = 1.0,
        cond_scale: float = 1.0,
        null_ids: Tensor | None = None,
        use_cache: bool = True,
        compile: bool = False,
        logits_out: list[Tensor] | None = None,
    ) -> Tensor:
        """Extend internal ids ``[B, P]`` to length ``end``; guidance runs cond and null in one batch.

        ``compile`` runs each cached decode step through ``torch.compile`` (fixed shapes: one graph)."""
        batch, t = ids.shape[0], self.layout.text_len
        guided = cond_scale != 1
        if guided and (null_ids is None or null_ids.shape != ids.shape):
            raise ValueError("guidance needs null-conditioned ids of the same shape as the prompt")
        seq = torch.cat((ids, null_ids)) if guided else ids
        cache = KVCache(self.transformer.depth, self.total_seq_len - 1) if use_cache else None
        step = self._compiled_decode_step() if compile and use_cache else None
        pos = seq.shape[1]
        h = self._hidden(seq, 0, cache)[:, -1]
        while pos < end:
            is_text = pos < t  # the token at `pos` belongs to the text
            logits = self._text_logits(h) if is_text else self._image_logits(h)
            if guided:
                cond, null = logits[:batch], logits[batch:]
                logits = cond if is_text else null + (cond - null) * cond_scale
            if logits_out is not None:
                logits_out.append(logits)
            token = sample(top_p_filter(top_k_filter(logits, filter_thres), top_p), temperature)
            if guided:
                # the null branch keeps its padding text and follows the guided image tokens
                null_token = (
                    torch.full_like(token, self.num_text_tokens_input + pos - 1) if is_text else token
                )
                token = torch.cat((token, null_token))
            seq = torch.cat((seq, token[:, None]), dim=1)
            pos += 1
            if pos == end:
                break
            if step is not None:
                positions = torch.full((1,), pos - 1, dtype=torch.long, device=seq.device)
                h = step(seq[:, -1:].contiguous(), positions, pos - 1 < t, cache)
            elif cache is not None:
                h = self._hidden(seq[:, -1:], pos - 1, cache)[:, -1]
            else:
                h = self._hidden(seq)[:, -1]
        return seq[:batch]

    @_eval_mode
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

        ``img`` primes the first ``num_init_img_tokens`` image tokens (default 43.75 % of the image);
        ``cond_scale != 1`` applies classifier-free guidance against an empty caption. ``compile`` runs the
        decode step through ``torch.compile`` (the first call compiles: worth it for many images).
        """
        del mask
        text = text[:, : self.text_seq_len]
        ids = self.text_ids(text)
        null_ids = self.text_ids(torch.zeros_like(text))
        if img is not None:
            n_init = int(0.4375 * self.image_seq_len) if num_init_img_tokens is None else num_init_img_tokens
            if not 0 <= n_init < self.image_seq_len:
                raise ValueError(f"num_init_img_tokens must be in [0, {self.image_seq_len}), got {n_init}")
            prime = self.image_ids(img)[:, :n_init]
            if prime.shape[0] != ids.shape[0]:
                raise ValueError(f"img has batch {prime.shape[0]}, text has {ids.shape[0]}")
            ids, null_ids = torch.cat((ids, prime), dim=1), torch.cat((null_ids, prime), dim=1)
        seq = self._sample_sequence(
            ids,
            self.total_seq_len,
            filter_thres=filter_thres,
            temperature=temperature,
            top_p=top_p,
            cond_scale=cond_scale,
            null_ids=null_ids,
            use_cache=use_cache,
            compile=compile,
        )
        images = self.vae.decode(seq[:, self.layout.text_len :])
        if clip is not None:
            return images, clip(text, images, return_loss=False)
        return images

    @_eval_mode
    def generate_texts(
        self,
        tokenizer: Any,
        text: str | None = None,
        *,
        filter_thres: float = 0.5,
        temperature: float = 1.0,
        top_p: float = 1.0,
        use_cache: bool = True,
        compile: bool = False,
    ) -> tuple[Tensor, list[str]]:
        """Continue ``text`` (or start afresh) to ``text_seq_len`` tokens: ``(tokens [1, S], [str])``."""
        device = self.to_logits.weight.device
        prompt = list(tokenizer.encode(text))[: self.text_seq_len] if text else []
        ids = self.text_ids(torch.tensor([prompt], dtype=torch.long, device=device))[:, : len(prompt) + 1]
        seq = self._sample_sequence(
            ids,
            self.layout.text_len,
            filter_thres=filter_thres,
            temperature=temperature,
            top_p=top_p,
            use_cache=use_cache,
            compile=compile,
        )
        tokens = seq[:, 1:]
        tokens = tokens.masked_fill(tokens >= self.num_text_tokens_input, 0)
        return tokens, [tokenizer.decode([i for i in row if i != 0]) for row in tokens.tolist()]


@functools.cache
def _compiled_decode_step() -> Callable[..., Tensor]:
    """The process's one compiled ``DALLE._decode_step`` (the model is its first argument)."""
    return torch.compile(DALLE._decode_step, dynamic=False)
