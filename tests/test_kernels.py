"""The SDPA executor against the dense reference, for full passes, cached decode rows and padding."""

import pytest
import torch

from dalle_dist.attention import (
    PATTERNS,
    MaskSpec,
    SequenceLayout,
    attention,
    group_plan,
    make_pattern,
    reference_attention,
    structured_attention,
)

LAYOUT = SequenceLayout(text_len=4, fmap_size=4)


def _qkv(n, b=2, h=3, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g) for _ in range(3)]


@pytest.mark.parametrize("name", list(PATTERNS))
def test_full_pass_matches_reference(name):
    pattern = make_pattern(name, LAYOUT, block_size=3, local_blocks=2, global_stride=2)
    n = LAYOUT.total_len
    q, k, v = _qkv(n)
    mask = pattern.dense_mask()
    spec = MaskSpec(causal=True) if name == "full" else MaskSpec(pattern=mask)
    torch.testing.assert_close(
        attention(q, k, v, spec), reference_attention(q, k, v, mask), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("offset", [0, 3, 4, 11, 19])
def test_decode_rows_match_reference(name, offset):
    """A query block at `offset` against the cached prefix equals those rows of the full computation."""
    pattern = make_pattern(name, LAYOUT, block_size=3, local_blocks=2, global_stride=2)
    n = LAYOUT.total_len
    q, k, v = _qkv(n, seed=1)
    mask = pattern.dense_mask()
    full = reference_attention(q, k, v, mask)
    spec = MaskSpec(causal=True) if name == "full" else MaskSpec(pattern=mask)
    rows = slice(offset, offset + 1)
    out = attention(q[:, :, rows], k[:, :, : offset + 1], v[:, :, : offset + 1], spec, q_offset=offset)
    torch.testing.assert_close(out, full[:, :, rows], atol=1e-5, rtol=1e-5)


def test_key_padding_hides_keys():
    q, k, v = _qkv(6)
    keep = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    out = attention(q, k, v, MaskSpec(key_padding=keep))
    dense = keep[:, None, None, :].expand(2, 1, 6, 6)
    torch.testing.assert_close(out, reference_attention(q, k, v, dense), atol=1e-5, rtol=1e-5)
    # changing a padded key changes nothing
    v2 = v.clone()
    v2[1, :, 4] += 100
    torch.testing.assert_close(attention(q, k, v2, MaskSpec(key_padding=keep))[1], out[1])


STRUCTURED = [
    ("axial_row", {}),
    ("axial_col", {}),
    ("conv_like", {"kernel_size": 3}),
    ("conv_like", {"kernel_size": 5, "dilation": 2}),
    ("sparse", {"block_size": 4, "local_blocks": 2, "global_stride": 3}),  # 25 tokens: a padded last block
    ("sparse", {"block_size": 8, "local_blocks": 1, "global_stride": 0}),
]


@pytest.mark.parametrize(("name", "options"), STRUCTURED)
@pytest.mark.parametrize("fmap", [5, 6])
def test_structured_executor_matches_reference(name, options, fmap):
    """Outputs and gradients of the structured executor equal the dense reference (fp64), for a whole
    sequence and for the training length (all but the last position)."""
    layout = SequenceLayout(4, fmap)
    pattern = make_pattern(name, layout, **options)
    for length in (layout.total_len, layout.total_len - 1):
        plan = group_plan(pattern, length)
        # the plan covers exactly the pattern: every allowed key is in its query's list, nothing else
        dense = torch.zeros(length + 1, length + 1, dtype=torch.bool)
        real = plan.queries < length
        q_pos = plan.queries[:, :, None].expand_as(plan.mask)[real]
        k_pos = plan.keys[:, None, :].expand_as(plan.mask)[real]
        dense[q_pos, k_pos] = plan.mask[real]
        t = layout.text_len
        expected = pattern.dense_mask(length)
        assert torch.equal(dense[t:length, :length], expected[t:])
        q, k, v = (x.double().requires_grad_() for x in _qkv(length))
        out = structured_attention(q, k, v, plan)
        ref = reference_attention(q, k, v, expected)
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
        grad = torch.randn_like(out)
        ours, theirs = torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_structured_model_equals_dense_model():
    """The same DALLE weights under attn_impl structured and dense: same loss, same gradients (fp32)."""
    from conftest import small_dalle

    kinds = ["axial_row", "axial_col", "conv_like", "sparse"]
    models = [
        small_dalle(attn_types=kinds, depth=4, attn_impl=impl, sparse_block_size=4)
        for impl in ("structured", "dense")
    ]
    models[1].load_state_dict(models[0].state_dict())
    assert all(spec.plan is not None for spec in models[0].mask_specs())
    assert all(spec.plan is None for spec in models[1].mask_specs())
    text = torch.randint(1, 50, (3, 6))
    image = torch.rand(3, 3, models[0].vae.image_size, models[0].vae.image_size)
    grads = []
    for model in models:
        loss = model(text, image, return_loss=True)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        grads[-1]["loss"] = loss.detach()
    for key in grads[1]:
        torch.testing.assert_close(grads[0][key], grads[1][key], atol=1e-5, rtol=1e-4, msg=key)


def test_auto_uses_structured_axial_from_a_32_grid():
    """attn_impl="auto" follows bench/attention_layers.py: structured axial layers at a 32 x 32 grid and up,
    dense masks elsewhere."""
    from dalle_dist.models import DALLE, DiscreteVAE

    kinds = ("full", "axial_row", "axial_col", "conv_like")
    for size, expected in ((256, [False, True, True, False]), (128, [False, False, False, False])):
        vae = DiscreteVAE(image_size=size, num_tokens=16, codebook_dim=8, num_layers=3, hidden_dim=4)
        model = DALLE(
            dim=16,
            vae=vae,
            num_text_tokens=20,
            text_seq_len=4,
            depth=4,
            heads=1,
            dim_head=8,
            attn_types=kinds,
        )
        assert [spec.plan is not None for spec in model.mask_specs()] == expected, size
