"""Sampling from a DALLE: token filters (top-k, top-p, temperature) and the decoding loop.

The loop extends a prompt one token per step against a key-value cache (``kv_cache.py``), with
classifier-free guidance run as one batch of conditioned and null-conditioned rows, and optionally
through the model's fixed-shape decode step compiled by ``torch.compile``. ``DALLE.generate_images`` and
``generate_texts`` are thin methods over ``generate_images`` / ``generate_texts`` here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .kv_cache import KVCache


def top_k_count(thres: float, vocab: int) -> int:
    """How many tokens ``top_k_filter`` keeps: below 1, ``thres`` is DALLE-pytorch's ``filter_thres`` (keep
    the ``max(1, (1 - thres) * vocab)`` largest); from 1 up, a whole number is a count (minDALL-E's
    ``top_k``). The two meanings agree at 1: one token."""
    if thres >= 1.0:
        if thres != int(thres):
            raise ValueError(
                f"top_k {thres} is neither a share below 1 (DALLE-pytorch's) nor a whole count of tokens: "
                "write e.g. 0.9 or 256"
            )
        return min(int(thres), vocab)
    if not thres >= 0.0:
        raise ValueError(f"top_k must be a share in [0, 1) or a whole count >= 1, got {thres}")
    return max(int((1 - thres) * vocab), 1)


def top_k_filter(logits: Tensor, thres: float = 0.5) -> Tensor:
    """Keep the ``top_k_count(thres, vocab)`` largest logits: a share below 1 (DALLE-pytorch's
    ``filter_thres``), or a count from 1 up (minDALL-E's ``top_k``)."""
    k = top_k_count(thres, logits.shape[-1])
    if k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, top_p: float = 1.0) -> Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set whose probability reaches ``top_p``."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # drop a token when the mass before it already reaches top_p; the most likely token always stays
    drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample(logits: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Draw one token per row by the Gumbel-max trick (equivalent to sampling from softmax(logits / T))."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    u = torch.rand(logits.shape, device=logits.device, generator=generator, dtype=torch.float32)
    exponential = -torch.log(u.clamp_min(1e-20))  # > 0; clamped so that log never sees 0
    gumbel = -torch.log(exponential.clamp_min(1e-20))
    return (logits.float() / temperature + gumbel).argmax(dim=-1)


# ------------------------------------------------------------------------------------------ the loop
def sample_sequence(
    model: nn.Module,
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
    """Extend a DALLE's internal ids ``[B, P]`` to length ``end``; guidance runs cond and null rows in one
    batch. ``compile`` runs each cached decode step through ``torch.compile`` (fixed shapes: one graph);
    ``logits_out`` collects the filtered-from logits of every step (for tests)."""
    batch, t = ids.shape[0], model.layout.text_len
    guided = cond_scale != 1
    if guided and (null_ids is None or null_ids.shape != ids.shape):
        raise ValueError("guidance needs null-conditioned ids of the same shape as the prompt")
    seq = torch.cat((ids, null_ids)) if guided else ids
    cache = KVCache(model.transformer.depth, model.total_seq_len - 1) if use_cache else None
    step = functools.partial(_compiled(type(model).decode_step), model) if compile and use_cache else None
    pos = seq.shape[1]
    h = model.hidden_states(seq, 0, cache)[:, -1]
    while pos < end:
        is_text = pos < t  # the token at `pos` belongs to the text
        logits = model.text_logits(h) if is_text else model.image_logits(h)
        if guided:
            cond, null = logits[:batch], logits[batch:]
            logits = cond if is_text else null + (cond - null) * cond_scale
        if logits_out is not None:
            logits_out.append(logits)
        token = sample(top_p_filter(top_k_filter(logits, filter_thres), top_p), temperature)
        if guided:
            # the null branch keeps its padding text and follows the guided image tokens
            null_token = torch.full_like(token, model.null_text_token(pos)) if is_text else token
            token = torch.cat((token, null_token))
        seq = torch.cat((seq, token[:, None]), dim=1)
        pos += 1
        if pos == end:
            break
        if step is not None:
            positions = torch.full((1,), pos - 1, dtype=torch.long, device=seq.device)
            h = step(seq[:, -1:].contiguous(), positions, pos - 1 < t, cache)
        elif cache is not None:
            h = model.hidden_states(seq[:, -1:], pos - 1, cache)[:, -1]
        else:
            h = model.hidden_states(seq)[:, -1]
    return seq[:batch]


@functools.cache
def _compiled(decode_step: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``decode_step`` (a model class's function, the model its first argument) through ``torch.compile``,
    once per process: not one compiled function per model instance, which a copy of the model would share
    with its original. torch recompiles only for another architecture, batch size, dtype or device."""
    return torch.compile(decode_step, dynamic=False)


def _inference(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn(model, ...)`` with the model in eval mode and under inference mode, restoring its mode.

    Inference mode (not just no_grad) trims the per-operation bookkeeping that dominates a decode step of
    small tensors; the results are cloned out of it so that callers may use them in autograd."""

    @functools.wraps(fn)
    def wrapper(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                out = fn(model, *args, **kwargs)
            return _plain(out)
        finally:
            model.train(was_training)

    return wrapper


def _plain(value: Any) -> Any:
    """``value`` with its tensors copied out of inference mode."""
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value)
    return value


@_inference
def generate_images(
    model: nn.Module,
    text: Tensor,
    *,
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
    """``DALLE.generate_images`` (see there)."""
    text = text[:, : model.text_seq_len]
    ids = model.text_ids(text)
    null_ids = model.text_ids(torch.zeros_like(text))
    if img is not None:
        n_image = model.image_seq_len
        n_init = int(0.4375 * n_image) if num_init_img_tokens is None else num_init_img_tokens
        if not 0 <= n_init < n_image:
            raise ValueError(f"num_init_img_tokens must be in [0, {n_image}), got {n_init}")
        prime = model.image_ids(img)[:, :n_init]
        if prime.shape[0] != ids.shape[0]:
            raise ValueError(f"img has batch {prime.shape[0]}, text has {ids.shape[0]}")
        ids, null_ids = torch.cat((ids, prime), dim=1), torch.cat((null_ids, prime), dim=1)
    seq = sample_sequence(
        model,
        ids,
        model.total_seq_len,
        filter_thres=filter_thres,
        temperature=temperature,
        top_p=top_p,
        cond_scale=cond_scale,
        null_ids=null_ids,
        use_cache=use_cache,
        compile=compile,
    )
    images = model.vae.decode(seq[:, model.layout.text_len :])
    if clip is not None:
        return images, clip(text, images, return_loss=False)
    return images


@_inference
def generate_texts(
    model: nn.Module,
    tokenizer: Any,
    text: str | None = None,
    *,
    filter_thres: float = 0.5,
    temperature: float = 1.0,
    top_p: float = 1.0,
    use_cache: bool = True,
    compile: bool = False,
) -> tuple[Tensor, list[str]]:
    """``DALLE.generate_texts`` (see there)."""
    device = model.to_logits_norm.weight.device
    prompt = list(tokenizer.encode(text))[: model.text_seq_len] if text else []
    if model.plain_text and not prompt:
        raise ValueError("a DALLE with a plain text layout has no begin token: give text to complete")
    start = len(prompt) + (0 if model.plain_text else 1)
    ids = model.text_ids(torch.tensor([prompt], dtype=torch.long, device=device))[:, :start]
    seq = sample_sequence(
        model,
        ids,
        model.layout.text_len,
        filter_thres=filter_thres,
        temperature=temperature,
        top_p=top_p,
        use_cache=use_cache,
        compile=compile,
    )
    tokens = model.user_text(seq)
    return tokens, [tokenizer.decode([i for i in row if i != 0]) for row in tokens.tolist()]
