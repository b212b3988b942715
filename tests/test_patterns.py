"""Each attention pattern, element by element, against a loop-built mask written from its definition."""

import pytest
import torch

from dalle_dist.attention import PATTERNS, SequenceLayout, make_pattern

LAYOUT = SequenceLayout(text_len=5, fmap_size=6)
SPARSE_LOCAL = dict(block_size=4, local_blocks=1, global_stride=0)


def reference_allowed(name: str, q: int, k: int, layout: SequenceLayout, **opt) -> bool:
    """The patterns as prose turns into code, one position pair at a time."""
    t, f = layout.text_len, layout.fmap_size
    if k > q:
        return False
    if q < t or k < t:  # text is causal; image queries see all text
        return True
    (qr, qc), (kr, kc) = divmod(q - t, f), divmod(k - t, f)
    if name == "full":
        return True
    if name == "axial_row":
        return qr == kr
    if name == "axial_col":
        return qc == kc
    if name == "conv_like":
        size, dil = opt.get("kernel_size", 5), opt.get("dilation", 1)
        offsets = {i * dil for i in range(-(size // 2), size // 2 + 1)}
        return (qr - kr) in offsets and (qc - kc) in offsets
    if name == "sparse":
        block, local, stride = (
            opt.get("block_size", 16),
            opt.get("local_blocks", 4),
            opt.get("global_stride", 4),
        )
        bq, bk = (q - t) // block, (k - t) // block
        return bq - bk < local or (stride > 0 and bk % stride == stride - 1)
    raise AssertionError(name)


CASES = [
    ("full", {}),
    ("axial_row", {}),
    ("axial_col", {}),
    ("conv_like", {}),
    ("conv_like", {"kernel_size": 3, "dilation": 2}),
    ("conv_like", {"kernel_size": 7, "dilation": 1}),
    ("sparse", {"block_size": 4, "local_blocks": 2, "global_stride": 3}),
    ("sparse", {"block_size": 3, "local_blocks": 1, "global_stride": 0}),
    ("sparse", {}),
]


@pytest.mark.parametrize(("name", "opt"), CASES)
def test_dense_mask_matches_definition(name, opt):
    mask = make_pattern(name, LAYOUT, opt).dense_mask()
    n = LAYOUT.total_len
    expected = torch.tensor(
        [[reference_allowed(name, q, k, LAYOUT, **opt) for k in range(n)] for q in range(n)]
    )
    assert mask.shape == (n, n)
    assert torch.equal(mask, expected)


@pytest.mark.parametrize(("name", "opt"), CASES)
def test_structural_promises(name, opt):
    mask = make_pattern(name, LAYOUT, opt).dense_mask()
    t = LAYOUT.text_len
    assert not torch.triu(mask, diagonal=1).any(), "a position attends to a later one"
    assert mask.diagonal().all(), "every position must see itself"
    assert not mask[:t, t:].any(), "text attends to image"
    assert mask[t:, :t].all(), "image must see all text"
    assert torch.equal(mask[:t, :t], torch.ones(t, t, dtype=torch.bool).tril())


def test_patterns_really_differ_on_image_positions():
    masks = {
        name: make_pattern(name, LAYOUT, SPARSE_LOCAL if name == "sparse" else None).dense_mask()
        for name in PATTERNS
    }
    counts = {name: int(m.sum()) for name, m in masks.items()}
    assert counts["full"] > max(v for k, v in counts.items() if k != "full")
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.equal(masks[a], masks[b]), (a, b)


def test_mask_mod_broadcasts_like_flex_attention():
    pattern = make_pattern("conv_like", LAYOUT)
    q = torch.arange(LAYOUT.total_len)[:, None]
    k = torch.arange(LAYOUT.total_len)[None, :]
    assert torch.equal(pattern.mask_mod(q, k), pattern.dense_mask())
    assert bool(pattern.mask_mod(torch.tensor(10), torch.tensor(3)))


@pytest.mark.parametrize(
    ("name", "opt", "message"),
    [
        ("nope", {}, "unknown attention type 'nope'"),
        ("conv_like", {"kernel_size": 4}, "kernel_size must be odd"),
        ("conv_like", {"dilation": 0}, "dilation must be positive"),
        ("sparse", {"block_size": 0}, "block_size must be positive"),
    ],
)
def test_bad_options_are_named(name, opt, message):
    with pytest.raises(ValueError, match=message):
        make_pattern(name, LAYOUT, opt)
