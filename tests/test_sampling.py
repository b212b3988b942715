"""Sampling filters and the Gumbel-max sampler."""

import pytest
import torch

from dalle_dist.generation import build_parser
from dalle_dist.models.sampling import sample, top_k_filter, top_p_filter


def test_sample_follows_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).expand(40000, 4)
    draws = sample(logits, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    torch.testing.assert_close(freq, logits[0].softmax(-1), atol=0.01, rtol=0)


def test_temperature_sharpens_and_zero_is_greedy():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).expand(20000, 4)
    cold = sample(logits, temperature=0.25, generator=torch.Generator().manual_seed(0))
    warm = sample(logits, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert (cold == 2).float().mean() > (warm == 2).float().mean() + 0.2
    assert (sample(logits, temperature=0) == 2).all()


def test_top_k_keeps_the_best_share():
    logits = torch.arange(10.0)[None]
    kept = torch.isfinite(top_k_filter(logits, thres=0.7))
    assert kept[0].tolist() == [False] * 7 + [True] * 3
    assert torch.isfinite(top_k_filter(logits, thres=1.0)).sum() == 1
    assert torch.isfinite(top_k_filter(logits, thres=0.0)).all()
    draws = sample(top_k_filter(logits.expand(1000, 10), 0.8), generator=torch.Generator().manual_seed(1))
    assert set(draws.tolist()) <= {8, 9}


def test_top_k_from_one_up_is_a_count():
    """minDALL-E's top_k=256 keeps 256 tokens; DALLE-pytorch's 0.9 a share; at 1 both meanings keep one."""
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    assert (torch.isfinite(top_k_filter(logits, 3)).sum(-1) == 3).all()
    assert torch.isfinite(top_k_filter(logits, 256)).all()  # more than the vocabulary: every token
    assert torch.equal(top_k_filter(logits, 1), top_k_filter(logits, 1.0))
    assert torch.equal(top_k_filter(logits, 1).argmax(-1), logits.argmax(-1))
    for bad in (2.5, -0.1):
        with pytest.raises(ValueError, match="top_k"):
            top_k_filter(logits, bad)


@pytest.mark.parametrize(("given", "kept"), [("256", 256.0), ("0.9", 0.9), ("1", 1.0)])
def test_generate_flag_top_k_takes_a_share_or_a_count(given, kept):
    args = build_parser().parse(["--dalle_path", "x", "--text", "a", "--top_k", given])
    assert args.top_k == kept


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(top_p_filter(probs.log(), top_p=0.75))
    assert kept[0].tolist() == [True, True, False, False]
    assert torch.isfinite(top_p_filter(probs.log(), top_p=0.01)).sum() == 1
    shuffled = probs[:, [2, 0, 3, 1]].log()
    assert torch.isfinite(top_p_filter(shuffled, 0.75))[0].tolist() == [False, True, False, True]
