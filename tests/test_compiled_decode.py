"""The fixed-shape decode step behind ``generate_images(compile=True)``: same tokens as the eager cache.

The step takes its position as a tensor and attends over the whole preallocated cache, masked by
position, so ``torch.compile`` traces it once. Its arithmetic is checked eagerly for every pattern and
model option (fast), then once through the real compiler.
"""

from copy import deepcopy

import pytest
import torch
from conftest import small_dalle
from torch._dynamo.utils import counters

from dalle_dist import ByteTokenizer
from dalle_dist.models import sampling

ALL_TYPES = ("full", "axial_row", "axial_col", "conv_like", "sparse")
SPARSE_SMALL = dict(sparse_block_size=3, sparse_local_blocks=2, sparse_global_stride=2, conv_kernel_size=3)


def _text(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, 50, (batch, 6), generator=g)
    text[:, 4:] = 0
    return text


def _sample(dalle, text, cond_scale, **kwargs):
    """(sequence, logits per step) of one seeded run from the caption alone."""
    ids, null = dalle.text_ids(text), dalle.text_ids(torch.zeros_like(text))
    torch.manual_seed(123)
    logits = []
    with torch.inference_mode():
        seq = sampling.sample_sequence(
            dalle,
            ids[:, :3],  # a short prompt: the step also decodes text positions
            dalle.total_seq_len,
            filter_thres=0.5,
            temperature=1.0,
            cond_scale=cond_scale,
            null_ids=null[:, :3],
            logits_out=logits,
            **kwargs,
        )
    return seq, logits


def _assert_same_run(a, b):
    (seq_a, log_a), (seq_b, log_b) = a, b
    assert torch.equal(seq_a, seq_b)
    assert len(log_a) == len(log_b)
    assert max((a - b).abs().max().item() for a, b in zip(log_a, log_b, strict=True)) < 1e-5


MODELS = {
    "every pattern, rotary, shift": dict(attn_types=ALL_TYPES, depth=5, **SPARSE_SMALL),
    "reversible, position embeddings, no shift, shared embeddings": dict(
        attn_types=("axial_col", "full"),
        reversible=True,
        rotary_emb=False,
        shift_tokens=False,
        share_input_output_emb=True,
    ),
    "shared layers, sandwich norm, stable": dict(
        attn_types=("conv_like", "axial_row"),
        depth=4,
        shared_attn_ids=(0, 1),
        shared_ff_ids=0,
        sandwich_norm=True,
        stable=True,
    ),
}


@pytest.mark.parametrize("options", MODELS.values(), ids=MODELS.keys())
@pytest.mark.parametrize("cond_scale", [1.0, 3.0])
def test_fixed_shape_step_equals_eager_cache(vae, options, cond_scale, monkeypatch):
    dalle = small_dalle(vae, **options).eval()
    text = _text()
    eager = _sample(dalle, text, cond_scale)
    # the fixed-shape step itself, run eagerly: its arithmetic, without the compiler's time
    monkeypatch.setattr(sampling, "_compiled", lambda step: step)
    fixed = _sample(dalle, text, cond_scale, compile=True)
    _assert_same_run(fixed, eager)
    assert eager[0][:, dalle.layout.text_len :].unique().numel() > 4, "sampling should draw varied tokens"


@pytest.mark.slow
def test_compiled_generation_equals_eager_and_compiles_once(vae):
    dalle = small_dalle(vae, attn_types=("full", "conv_like", "axial_row"), depth=3, **SPARSE_SMALL)
    text = _text()
    torch.manual_seed(5)
    eager = dalle.generate_images(text, cond_scale=2.0)
    counters.clear()
    torch.manual_seed(5)
    compiled = dalle.generate_images(text, cond_scale=2.0, compile=True)
    torch.testing.assert_close(compiled, eager)
    assert dalle.training, "generation must restore training mode"
    traced = counters["stats"]["unique_graphs"]
    assert traced >= 1, "the decode step should have been compiled"
    # a second call, with a new cache and other captions, reuses the compiled step
    with torch._dynamo.config.patch(error_on_recompile=True):
        dalle.generate_images(_text(seed=1), cond_scale=2.0, compile=True)
    assert counters["stats"]["unique_graphs"] == traced


@pytest.mark.slow
def test_a_copy_of_the_model_decodes_with_its_own_weights(vae):
    """The compiled step is shared by every model: a copy with other weights must still use its own."""
    dalle = small_dalle(vae, attn_types=("full", "axial_col"))
    text = _text()
    dalle.generate_images(text, compile=True)
    copy = deepcopy(dalle)
    with torch.no_grad():
        copy.to_logits.bias[copy.num_text_tokens :].normal_(0, 5)  # another image distribution
    images = {}
    for name, model in (("original", dalle), ("copy", copy)):
        for compiled in (False, True):
            torch.manual_seed(9)
            images[name, compiled] = model.generate_images(text, compile=compiled)
    torch.testing.assert_close(images["copy", True], images["copy", False])
    torch.testing.assert_close(images["original", True], images["original", False])
    assert not torch.allclose(images["copy", True], images["original", True])


@pytest.mark.slow
def test_compiled_text_generation_equals_eager():
    tok = ByteTokenizer()
    dalle = small_dalle(num_text_tokens=tok.vocab_size, text_seq_len=10, shift_tokens=True)
    out = []
    for compile in (False, True):
        torch.manual_seed(3)
        out.append(dalle.generate_texts(tok, "ab", compile=compile)[0])
    assert torch.equal(*out)
