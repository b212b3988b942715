"""Reversible layers: exact gradients (recomputed vs stored activations) and depth-independent memory."""

import pytest
import torch
from conftest import small_dalle

from dalle_dist.models.reversible import reversible_sequence


def _grads(model, text, image, memory_saving):
    model.zero_grad()
    model.transformer.memory_saving = memory_saving
    torch.manual_seed(42)  # same dropout masks in both runs
    model(text, image, return_loss=True).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_recomputed_gradients_equal_stored_ones(vae, dropout):
    dalle = small_dalle(
        vae,
        depth=4,
        reversible=True,
        attn_types=("full", "axial_row", "conv_like"),
        attn_dropout=dropout,
        ff_dropout=dropout,
        shift_tokens=True,
        conv_kernel_size=3,
    )
    text = torch.randint(1, 50, (2, 6))
    image = torch.randint(0, 32, (2, 16))
    fast = _grads(dalle, text, image, memory_saving=True)
    slow = _grads(dalle, text, image, memory_saving=False)
    assert fast.keys() == slow.keys() and len(fast) > 10
    for name in fast:
        torch.testing.assert_close(fast[name], slow[name], atol=1e-5, rtol=1e-4, msg=name)


def _saved_bytes(fn) -> int:
    """Bytes of distinct tensors autograd keeps for the backward pass."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_activation_memory_does_not_grow_with_depth(vae):
    text = torch.randint(1, 50, (2, 6))
    image = torch.randint(0, 32, (2, 16))
    saved = {}
    for reversible in (False, True):
        for depth in (2, 8):
            dalle = small_dalle(vae, depth=depth, reversible=reversible)
            saved[reversible, depth] = _saved_bytes(lambda d=dalle: d(text, image, return_loss=True))
    assert saved[False, 8] > 2.5 * saved[False, 2]
    assert saved[True, 8] == saved[True, 2]


def test_reversible_sequence_inverts_exactly():
    torch.manual_seed(0)
    f, g = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    x1 = torch.randn(3, 4, requires_grad=True)
    x2 = torch.randn(3, 4, requires_grad=True)
    y1, y2 = reversible_sequence(x1, x2, [(f, g)] * 3)
    (y1.sum() + 2 * y2.sum()).backward()
    grads = x1.grad.clone(), x2.grad.clone(), f.weight.grad.clone()
    x1.grad = x2.grad = f.weight.grad = g.weight.grad = None
    z1, z2 = reversible_sequence(x1, x2, [(f, g)] * 3, memory_saving=False)
    (z1.sum() + 2 * z2.sum()).backward()
    torch.testing.assert_close(y1, z1)
    for a, b in zip(grads, (x1.grad, x2.grad, f.weight.grad), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_activation_checkpointing_keeps_gradients_and_saves_memory(vae, dropout):
    """--activation_checkpointing recomputes each block in backward: the same gradients (dropout replayed),
    and autograd keeps only the block inputs instead of every activation."""
    text = torch.randint(1, 50, (2, 6))
    image = torch.randint(0, 32, (2, 16))
    kwargs = dict(depth=4, attn_types=("full", "axial_row"), attn_dropout=dropout, ff_dropout=dropout)
    plain = small_dalle(vae, **kwargs)
    ckpt = small_dalle(vae, activation_checkpointing=True, **kwargs)
    ckpt.load_state_dict(plain.state_dict())
    a, b = _grads(plain, text, image, memory_saving=True), _grads(ckpt, text, image, memory_saving=True)
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5, msg=name)
    saved_plain = _saved_bytes(lambda: plain(text, image, return_loss=True))
    saved_ckpt = _saved_bytes(lambda: ckpt(text, image, return_loss=True))
    assert saved_ckpt < 0.5 * saved_plain, (saved_ckpt, saved_plain)
