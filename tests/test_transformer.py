"""Token shift: which earlier token feeds which channels, in a full pass and one position at a time."""

import torch

from dalle_dist.attention import SequenceLayout
from dalle_dist.models.transformer import TokenShift


def expected_shift(x: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
    """The rule spelled out position by position (the specification the fast code must meet)."""
    t, f = layout.text_len, layout.fmap_size
    q = x.shape[-1] // 4
    out = x.clone()
    for p in range(x.shape[1]):
        zero = torch.zeros_like(x[:, p, :q])
        if p < t:
            prev = x[:, p - 1] if p > 0 else torch.zeros_like(x[:, p])
            out[:, p, : 2 * q] = prev[:, : 2 * q]
        else:
            row, col = divmod(p - t, f)
            out[:, p, :q] = x[:, p - f, :q] if row > 0 else zero
            out[:, p, q : 2 * q] = x[:, p - 1, q : 2 * q] if col > 0 else zero
    return out


def test_full_pass_and_incremental_match_the_rule():
    layout = SequenceLayout(text_len=3, fmap_size=3)
    shift = TokenShift(layout)
    torch.manual_seed(0)
    x = torch.randn(2, layout.total_len, 8)
    want = expected_shift(x, layout)
    torch.testing.assert_close(shift(x), want, rtol=0, atol=0)
    # a prefix shorter than one grid row past the text, and one position at a time against the history
    torch.testing.assert_close(shift(x[:, :5]), want[:, :5], rtol=0, atol=0)
    for p in range(layout.total_len):
        got = shift(x[:, p : p + 1], offset=p, history=x[:, : p + 1])
        torch.testing.assert_close(got, want[:, p : p + 1], rtol=0, atol=0)


def test_full_pass_gradient_matches_the_rule():
    layout = SequenceLayout(text_len=2, fmap_size=4)
    x = torch.randn(1, layout.total_len, 12, dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, layout.total_len, 12, dtype=torch.float64)
    (grad,) = torch.autograd.grad((TokenShift(layout)(x) * g).sum(), x)
    (want,) = torch.autograd.grad((expected_shift(x, layout) * g).sum(), x)
    torch.testing.assert_close(grad, want)


def test_rotary_decode_matrix_equals_the_elementwise_rotation():
    """A decode step rotates with one [d, d] matrix per position; it is the same rotation as a full pass's."""
    from dalle_dist.models.transformer import Rotary

    coords = torch.stack([torch.arange(20), torch.arange(20) % 4, torch.arange(20) // 4], dim=1)
    rotary = Rotary(16, coords)
    x = torch.randn(2, 3, 20, 16)
    full = rotary(x)  # grad enabled: the elementwise path
    with torch.no_grad():
        for p in (0, 7, 19):
            torch.testing.assert_close(rotary(x[..., p : p + 1, :], offset=p), full[..., p : p + 1, :])
