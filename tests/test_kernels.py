"""The SDPA executor against the dense reference, for full passes, cached decode rows and padding."""

import pytest
import torch

from dalle_dist.attention import (
    PATTERNS,
    MaskSpec,
    SequenceLayout,
    attention,
    make_pattern,
    reference_attention,
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
