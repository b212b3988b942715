"""The SDPA executor against the dense reference, for full passes, cached decode rows and padding."""

import pytest
import torch

from dalle_dist.attention import (
    PATTERNS,
    AttentionPlan,
    SequenceLayout,
    attention,
    band_attention,
    band_plan,
    flex_plan,
    make_pattern,
    reference_attention,
)

LAYOUT = SequenceLayout(text_len=4, fmap_size=4)
SMALL = {"sparse": dict(block_size=3, local_blocks=2, global_stride=2)}


def _qkv(n, b=2, h=3, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g) for _ in range(3)]


@pytest.mark.parametrize("name", list(PATTERNS))
def test_full_pass_matches_reference(name):
    pattern = make_pattern(name, LAYOUT, SMALL.get(name))
    n = LAYOUT.total_len
    q, k, v = _qkv(n)
    mask = pattern.dense_mask()
    plan = AttentionPlan(causal=True) if name == "full" else AttentionPlan(mask=mask)
    torch.testing.assert_close(
        attention(q, k, v, plan), reference_attention(q, k, v, mask), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("offset", [0, 3, 4, 11, 19])
def test_decode_rows_match_reference(name, offset):
    """A query block at `offset` against the cached prefix equals those rows of the full computation."""
    pattern = make_pattern(name, LAYOUT, SMALL.get(name))
    n = LAYOUT.total_len
    q, k, v = _qkv(n, seed=1)
    mask = pattern.dense_mask()
    full = reference_attention(q, k, v, mask)
    plan = AttentionPlan(causal=True) if name == "full" else AttentionPlan(mask=mask)
    rows = slice(offset, offset + 1)
    out = attention(q[:, :, rows], k[:, :, : offset + 1], v[:, :, : offset + 1], plan, q_offset=offset)
    torch.testing.assert_close(out, full[:, :, rows], atol=1e-5, rtol=1e-5)


def test_key_padding_hides_keys():
    q, k, v = _qkv(6)
    keep = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    out = attention(q, k, v, AttentionPlan(key_padding=keep))
    dense = keep[:, None, None, :].expand(2, 1, 6, 6)
    torch.testing.assert_close(out, reference_attention(q, k, v, dense), atol=1e-5, rtol=1e-5)
    # changing a padded key changes nothing
    v2 = v.clone()
    v2[1, :, 4] += 100
    torch.testing.assert_close(attention(q, k, v2, AttentionPlan(key_padding=keep))[1], out[1])


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
def test_band_executor_matches_reference(name, options, fmap):
    """Outputs and gradients of the band executor equal the dense reference (fp64), for a whole sequence
    and for the training length (all but the last position)."""
    layout = SequenceLayout(4, fmap)
    pattern = make_pattern(name, layout, options)
    for length in (layout.total_len, layout.total_len - 1):
        plan = band_plan(pattern, length)
        expected = pattern.dense_mask(length)
        # the plan covers the pattern: each image query scores exactly as many keys as it may see
        real = plan.mask.sum(dim=-1).flatten()
        counts = expected[layout.text_len :].sum(dim=-1)
        assert sorted(real.tolist())[-len(counts) :] == sorted(counts.tolist())
        q, k, v = (x.double().requires_grad_() for x in _qkv(length))
        out = band_attention(q, k, v, plan)
        ref = reference_attention(q, k, v, expected)
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
        grad = torch.randn_like(out)
        ours, theirs = torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_band_executor_under_bf16_autocast():
    """Under CPU bf16 autocast the band executor stays close to the fp32 result (scores are softmaxed in
    fp32; bf16 keeps 8 bits of mantissa)."""
    layout = SequenceLayout(5, 6)
    plan = band_plan(make_pattern("conv_like", layout), layout.total_len - 1)
    q, k, v = _qkv(layout.total_len - 1, d=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = band_attention(q, k, v, plan)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), band_attention(q, k, v, plan), atol=3e-2, rtol=3e-2)


def test_structured_model_equals_dense_model():
    """The same DALLE weights under attn_impl structured and dense: same loss, same gradients (fp32)."""
    from conftest import small_dalle

    kinds = ["axial_row", "axial_col", "conv_like", "sparse"]
    models = [
        small_dalle(attn_types=kinds, depth=4, attn_impl=impl, sparse_block_size=4)
        for impl in ("structured", "dense")
    ]
    models[1].load_state_dict(models[0].state_dict())
    assert all(plan.band is not None for plan in models[0].planner.plans(torch.device("cpu")))
    assert all(plan.band is None for plan in models[1].planner.plans(torch.device("cpu")))
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


def test_auto_follows_the_measured_thresholds():
    """attn_impl="auto" follows bench/attention_layers.py: the band for axial layers from a 16 x 16 grid
    and conv-like ones from 32 x 32; dense masks elsewhere."""
    from dalle_dist.models import DALLE, DiscreteVAE

    kinds = ("full", "axial_row", "axial_col", "conv_like", "sparse")
    for size, expected in (
        (256, [False, True, True, True, False]),
        (128, [False, True, True, False, False]),
        (64, [False, False, False, False, False]),
    ):
        vae = DiscreteVAE(image_size=size, num_tokens=16, codebook_dim=8, num_layers=3, hidden_dim=4)
        model = DALLE(
            dim=16,
            vae=vae,
            num_text_tokens=20,
            text_seq_len=4,
            depth=5,
            heads=1,
            dim_head=8,
            attn_types=kinds,
        )
        assert [plan.band is not None for plan in model.planner.plans(torch.device("cpu"))] == expected, size


@pytest.mark.parametrize(("name", "options"), STRUCTURED)
def test_flex_block_mask_matches_reference(name, options):
    """FlexAttention under the block mask built from the pattern's mask_mod equals the dense reference
    (forward; on a GPU the same block mask drives the compiled Triton kernels, backward included)."""
    layout = SequenceLayout(4, 5)
    pattern = make_pattern(name, layout, options)
    length = layout.total_len - 1
    flex = flex_plan(pattern, length, "cpu")
    q, k, v = (x.double() for x in _qkv(length))
    plan = AttentionPlan(mask=pattern.dense_mask(length), flex=flex)
    torch.testing.assert_close(
        attention(q, k, v, plan), reference_attention(q, k, v, pattern.dense_mask(length)), atol=1e-12, rtol=0
    )


def test_flex_model_equals_dense_model():
    """attn_impl="flex" (eager FlexAttention on this CPU, inference) gives the dense model's logits; "auto"
    uses FlexAttention only where it can train (CUDA + Triton)."""
    from conftest import small_dalle

    kinds = ["axial_row", "axial_col", "conv_like", "sparse", "full"]
    models = [
        small_dalle(attn_types=kinds, depth=5, attn_impl=impl, sparse_block_size=4).eval()
        for impl in ("flex", "dense", "auto")
    ]
    for model in models[1:]:
        model.load_state_dict(models[0].state_dict())
    assert [plan.flex is not None for plan in models[0].planner.plans(torch.device("cpu"))] == [True] * 4 + [
        False
    ]
    assert all(plan.flex is None for plan in models[2].planner.plans(torch.device("cpu")))  # no GPU here
    text = torch.randint(1, 50, (2, 6))
    image = torch.randint(0, 32, (2, models[0].image_seq_len))
    with torch.no_grad():
        flex, dense = models[0](text, image), models[1](text, image)
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("length", [40, 600])  # below and above the length run in fp32 on a CPU
def test_causal_sdpa_under_bf16_autocast(length):
    """Causal attention of bf16 inputs keeps their dtype (short sequences compute in fp32 on the CPU)
    and stays within bf16 rounding of the fp32 result."""
    q, k, v = _qkv(length, d=16)
    want = attention(q, k, v, AttentionPlan(causal=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attention(*(x.bfloat16() for x in (q, k, v)), AttentionPlan(causal=True))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("plan", ["full", "key_padding", "mask"])
def test_short_masked_attention_under_bf16_runs_in_fp32_on_the_cpu(plan):
    """Not only causal attention: every short SDPA call of bf16 inputs on the CPU (CLIP's full attention,
    padded captions, a pattern's mask) computes in fp32 and rounds once, where the bf16 flash kernel's
    backward is several times slower (bench/RESULTS.md)."""
    n = 40
    q, k, v = _qkv(n, d=16)
    padding = torch.ones(2, n, dtype=torch.bool)
    padding[0, 30:] = False
    mask = torch.rand(n, n, generator=torch.Generator().manual_seed(1)) < 0.7
    mask |= torch.eye(n, dtype=torch.bool)
    plans = {
        "full": (AttentionPlan(), None),
        "key_padding": (AttentionPlan(key_padding=padding), padding[:, None, None, :]),
        "mask": (AttentionPlan(mask=mask), mask),
    }
    layer_plan, sdpa_mask = plans[plan]
    halves = [x.bfloat16() for x in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attention(*halves, layer_plan)
    assert got.dtype == torch.bfloat16
    in_fp32 = torch.nn.functional.scaled_dot_product_attention(
        *(x.float() for x in halves), attn_mask=sdpa_mask
    )
    assert torch.equal(got, in_fp32.bfloat16())
    torch.testing.assert_close(got.float(), attention(q, k, v, layer_plan), atol=3e-2, rtol=3e-2)
