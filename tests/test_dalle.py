"""DALLE: shapes, loss, caching (exact), guidance, priming, sharing, text generation, memorisation."""

import pytest
import torch
from conftest import small_dalle, small_vae
from torch.utils.flop_counter import FlopCounterMode

from dalle_dist import ByteTokenizer
from dalle_dist.models.sampling import sample_sequence

ALL_TYPES = ("full", "axial_row", "axial_col", "conv_like", "sparse")
SPARSE_SMALL = dict(sparse_block_size=3, sparse_local_blocks=2, sparse_global_stride=2, conv_kernel_size=3)


def _text(batch=2, length=6, pad_from=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, 50, (batch, length), generator=g)
    text[:, pad_from:] = 0
    return text


def test_forward_logits_and_loss_shapes(vae):
    dalle = small_dalle(vae)
    text = _text()
    images = torch.rand(2, 3, 16, 16)
    logits = dalle(text, images)
    assert logits.shape == (2, dalle.text_seq_len + dalle.image_seq_len, dalle.total_tokens)
    # text positions predict only text tokens, image positions only image tokens
    s = dalle.text_seq_len
    assert (logits[:, :s, dalle.num_text_tokens :] < -1e30).all()
    assert (logits[:, s:, : dalle.num_text_tokens] < -1e30).all()
    loss, loss_text, loss_img = dalle(text, images, return_loss=True, return_loss_parts=True)
    w = dalle.loss_img_weight
    torch.testing.assert_close(loss, (loss_text + w * loss_img) / (w + 1))
    loss.backward()
    assert dalle.text_emb.weight.grad is not None
    assert all(p.grad is None for p in dalle.vae.parameters()), "the VAE must stay frozen"


def test_image_as_token_ids_equals_pixels(vae):
    dalle = small_dalle(vae)
    text, images = _text(), torch.rand(2, 3, 16, 16)
    ids = vae.get_codebook_indices(images)
    torch.testing.assert_close(dalle(text, images, return_loss=True), dalle(text, ids, return_loss=True))


def test_padding_gets_a_token_per_position(vae):
    dalle = small_dalle(vae)
    ids = dalle.text_ids(torch.tensor([[7, 0, 0, 9, 0, 0]]))
    n = dalle.text_vocab_size
    assert ids.tolist() == [[0, 7, n + 1, n + 2, 9, n + 4, n + 5]]


def test_loss_ignores_mask_argument_and_null_cond_prob_drops_text(vae):
    dalle = small_dalle(vae)
    text, images = _text(), torch.rand(2, 3, 16, 16)
    mask = torch.ones_like(text).bool()
    torch.testing.assert_close(
        dalle(text, images, mask=mask, return_loss=True), dalle(text, images, return_loss=True)
    )
    dropped = dalle(text, images, return_loss=True, null_cond_prob=1.0)
    torch.testing.assert_close(dropped, dalle(torch.zeros_like(text), images, return_loss=True))


@pytest.mark.parametrize("attn_type", ALL_TYPES)
@pytest.mark.parametrize("shift_tokens", [False, True])
@pytest.mark.parametrize("cond_scale", [1.0, 3.0])
def test_cached_generation_equals_uncached(vae, attn_type, shift_tokens, cond_scale):
    dalle = small_dalle(vae, attn_types=(attn_type, "full"), shift_tokens=shift_tokens, **SPARSE_SMALL).eval()
    text = _text()
    ids, null = dalle.text_ids(text), dalle.text_ids(torch.zeros_like(text))
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(123)
        logits = []
        with torch.no_grad():
            seq = sample_sequence(
                dalle,
                ids,
                dalle.total_seq_len,
                filter_thres=0.5,
                temperature=1.0,
                cond_scale=cond_scale,
                null_ids=null,
                use_cache=use_cache,
                logits_out=logits,
            )
        runs.append((seq, torch.stack(logits)))
    (seq_c, log_c), (seq_u, log_u) = runs
    assert torch.equal(seq_c, seq_u)
    assert seq_c[:, dalle.layout.text_len :].unique().numel() > 4, "sampling should draw varied tokens"
    assert log_c.shape[0] == dalle.image_seq_len
    assert (log_c - log_u).abs().max() < 1e-5


def test_generate_images_public_path_cache_flag(vae):
    dalle = small_dalle(vae, attn_types=ALL_TYPES, depth=5, **SPARSE_SMALL)
    text = _text()
    torch.manual_seed(5)
    a = dalle.generate_images(text, use_cache=True, cond_scale=2.0)
    torch.manual_seed(5)
    b = dalle.generate_images(text, use_cache=False, cond_scale=2.0)
    assert a.shape == (2, 3, 16, 16)
    torch.testing.assert_close(a, b)
    assert dalle.training, "generation must restore training mode"


def test_guidance_never_touches_callers_text(vae):
    dalle = small_dalle(vae)
    text = _text()
    before = text.clone()
    dalle.generate_images(text, cond_scale=3.0)
    assert torch.equal(text, before)


def test_guidance_mixes_conditional_and_null_logits(vae):
    dalle = small_dalle(vae).eval()
    text = _text()
    scale = 4.0
    logits = []
    with torch.no_grad():
        sample_sequence(
            dalle,
            dalle.text_ids(text),
            dalle.total_seq_len,
            filter_thres=0.5,
            temperature=1.0,
            cond_scale=scale,
            null_ids=dalle.text_ids(torch.zeros_like(text)),
            logits_out=logits,
        )
        cond = dalle(text)[:, -1, dalle.num_text_tokens :]
        null = dalle(torch.zeros_like(text))[:, -1, dalle.num_text_tokens :]
    assert not torch.allclose(cond, null)
    torch.testing.assert_close(logits[0], null + (cond - null) * scale, atol=1e-5, rtol=1e-5)


def test_priming_keeps_the_initial_tokens(vae):
    dalle = small_dalle(vae)
    text, img = _text(), torch.rand(2, 3, 16, 16)
    prime = vae.get_codebook_indices(img)[:, :7]
    seen = {}
    decode = vae.decode

    def spy(ids):
        seen["ids"] = ids
        return decode(ids)

    vae.decode = spy
    dalle.generate_images(text, img=img, num_init_img_tokens=7, cond_scale=2.0)
    assert torch.equal(seen["ids"][:, :7], prime)
    with pytest.raises(ValueError, match="num_init_img_tokens"):
        dalle.generate_images(text, img=img, num_init_img_tokens=dalle.image_seq_len)


def test_decode_step_cost_does_not_grow_with_prefix(vae):
    """Projections and feed-forward of a cached step process one token, wherever it sits."""
    dalle = small_dalle(vae, attn_types=ALL_TYPES, depth=5, **SPARSE_SMALL).eval()
    from dalle_dist.models.kv_cache import KVCache

    seq = torch.cat((dalle.text_ids(_text(batch=1)), torch.randint(0, 32, (1, 16))), dim=1)
    cache = KVCache(dalle.transformer.depth, dalle.total_seq_len - 1)
    flops = []
    with torch.no_grad():
        dalle.hidden_states(seq[:, :8], 0, cache)
        for pos in range(8, seq.shape[1]):
            with FlopCounterMode(display=False) as counter:
                dalle.hidden_states(seq[:, pos : pos + 1], pos, cache)
            counts = counter.get_flop_counts()["Global"]
            # linear layers (mm / addmm); the attention products (bmm) grow with the keys the step sees
            flops.append(sum(v for op, v in counts.items() if str(op).split(".")[-1] in ("mm", "addmm")))
    assert len(set(flops)) == 1 and flops[0] > 0, flops


def test_layer_sharing_keeps_separate_caches(vae):
    dalle = small_dalle(
        vae,
        depth=4,
        attn_types=("full", "axial_row"),
        shared_attn_ids=(0, 0, 1, 1),
        shared_ff_ids=(0, 1, 0, 1),
        **SPARSE_SMALL,
    )
    assert len(dalle.transformer.attns) == 2 and len(dalle.transformer.ffs) == 2
    names = {n for n, _ in dalle.named_parameters()}
    assert sum(".attns." in n and "to_qkv" in n for n in names) == 2
    dalle.eval()
    text = _text()
    ids, null = dalle.text_ids(text), dalle.text_ids(torch.zeros_like(text))
    seqs = []
    for use_cache in (True, False):
        torch.manual_seed(9)
        with torch.no_grad():
            seqs.append(
                sample_sequence(
                    dalle,
                    ids,
                    dalle.total_seq_len,
                    filter_thres=0.5,
                    temperature=1.0,
                    null_ids=null,
                    use_cache=use_cache,
                )
            )
    assert torch.equal(*seqs)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(rotary_emb=False),
        dict(share_input_output_emb=True),
        dict(stable=True, sandwich_norm=True),
        dict(reversible=True, attn_dropout=0.1, ff_dropout=0.1),
        dict(sparse_attn=(True, False)),
    ],
)
def test_variants_train_and_sample(vae, overrides):
    dalle = small_dalle(vae, **SPARSE_SMALL, **overrides)
    text, images = _text(), torch.rand(2, 3, 16, 16)
    loss = dalle(text, images, return_loss=True)
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in dalle.transformer.parameters())
    assert dalle.generate_images(text).shape == (2, 3, 16, 16)


def test_share_input_output_emb_ties_weights(vae):
    dalle = small_dalle(vae, share_input_output_emb=True)
    assert not hasattr(dalle, "text_emb")
    n_params = sum(p.numel() for p in dalle.parameters())
    untied = small_dalle(vae)
    assert (
        n_params
        == sum(p.numel() for p in untied.parameters())
        - untied.text_emb.weight.numel()
        - untied.image_emb.weight.numel()
    )


def test_sparse_attn_flag_selects_sparse_layers(vae):
    dalle = small_dalle(vae, depth=4, sparse_attn=(True, False), **SPARSE_SMALL)
    assert dalle.attn_types == ("sparse", "full", "sparse", "full")
    assert dalle.config()["attn_types"] == ["sparse", "full", "sparse", "full"]


def test_bad_arguments_are_named(vae):
    with pytest.raises(ValueError, match="unknown attention type 'diagonal'"):
        small_dalle(vae, attn_types=("full", "diagonal"))
    dalle = small_dalle(vae)
    with pytest.raises(ValueError, match="text_seq_len"):
        dalle(torch.ones(1, 9, dtype=torch.long), torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        dalle(torch.full((1, 6), 50), torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="16x16"):
        dalle(_text(), torch.rand(2, 3, 32, 32))
    with pytest.raises(TypeError, match="vae must expose"):
        small_dalle(object())


def test_generate_texts_with_byte_tokenizer():
    tok = ByteTokenizer()
    dalle = small_dalle(small_vae(), num_text_tokens=tok.vocab_size, text_seq_len=12)
    tokens, texts = dalle.generate_texts(tok, "a red")
    assert tokens.shape == (1, 12)
    assert tokens[0, :5].tolist() == tok.encode("a red")
    assert texts[0].startswith("a red")
    tokens2, _ = dalle.generate_texts(tok)
    assert tokens2.shape == (1, 12)


def test_generate_texts_cached_equals_uncached():
    tok = ByteTokenizer()
    dalle = small_dalle(small_vae(), num_text_tokens=tok.vocab_size, text_seq_len=10, shift_tokens=True)
    out = []
    for use_cache in (True, False):
        torch.manual_seed(3)
        out.append(dalle.generate_texts(tok, "ab", use_cache=use_cache)[0])
    assert torch.equal(*out)


def test_tiny_dalle_memorises_pairs(vae):
    """Overfitting check: a handful of (caption, image tokens) pairs are learned to near-zero loss."""
    torch.manual_seed(0)
    dalle = small_dalle(vae, dim=64, depth=2, heads=4, attn_types=("full", "axial_row"))
    text = torch.randint(1, 50, (4, 6))
    image = torch.randint(0, 32, (4, 16))
    opt = torch.optim.Adam([p for p in dalle.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(150):
        loss = dalle(text, image, return_loss=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, loss.item()
    # and greedy sampling (top-1) reproduces a memorised image from its caption
    decoded = []
    decode = vae.decode
    vae.decode = lambda ids: decoded.append(ids) or decode(ids)
    dalle.generate_images(text[:1], filter_thres=1.0)
    assert torch.equal(decoded[0], image[:1])


def test_attention_plans_are_built_once_per_device(vae):
    """The per-layer plans are cached (hot path), built anew on another device, and live there."""
    dalle = small_dalle(vae, attn_types=("full", "axial_row"))
    cpu = torch.device("cpu")
    first = dalle.planner.plans(cpu)
    assert dalle.planner.plans(cpu) is first
    dalle.to(torch.float64)  # a dtype change leaves the (bool) masks as they are
    assert dalle.planner.plans(cpu) is first
    elsewhere = dalle.planner.plans(torch.device("meta"))
    assert elsewhere is not first and elsewhere[1].mask.device.type == "meta"
    assert first[0].causal and first[1].mask.shape == (dalle.total_seq_len, dalle.total_seq_len)


def test_bf16_weights_sample_like_fp32(vae):
    """A DALLE cast to bf16 (what generate.py --bf16 does: the VAE stays fp32) gives logits close to fp32's
    and samples images through its bf16 cache."""
    dalle = small_dalle(vae, attn_types=("full", "axial_row")).eval()
    text = _text(batch=2)
    image = torch.randint(0, 32, (2, dalle.image_seq_len))
    with torch.no_grad():
        want = dalle(text, image)
        dalle.to(torch.bfloat16).vae.float()
        got = dalle(text, image)
    assert got.dtype == torch.bfloat16
    real = want > torch.finfo(want.dtype).min  # positions' own vocabularies
    torch.testing.assert_close(got.float()[real], want[real], atol=0.1, rtol=0.05)
    images = dalle.generate_images(text, filter_thres=0.5)
    assert images.dtype == torch.float32 and images.shape == (2, 3, vae.image_size, vae.image_size)


def test_config_is_built_once_and_reads_older_spellings(vae):
    """The keywords, a DALLEConfig and an older checkpoint's description (flat pattern options, no
    attn_options) give the same model description; options of unused patterns are not kept."""
    from dalle_dist import DALLE, DALLEConfig

    kwargs = dict(dim=32, num_text_tokens=50, text_seq_len=6, depth=3, heads=2, dim_head=16)
    by_keywords = DALLE(
        vae=vae, attn_types=("conv_like", "full"), attn_options={"conv_like": {"kernel_size": 3}}, **kwargs
    )
    old = {**kwargs, "attn_types": ["conv_like", "full", "conv_like"], "conv_kernel_size": 3,
           "conv_dilation": 1, "sparse_block_size": 16, "sparse_local_blocks": 4,
           "sparse_global_stride": 4}  # fmt: skip
    from_old = DALLE(DALLEConfig.from_dict(old), vae=vae)
    assert from_old.config() == by_keywords.config()
    assert by_keywords.config()["attn_options"] == {"conv_like": {"kernel_size": 3, "dilation": 1}}
    assert DALLEConfig.from_dict(by_keywords.config()) == by_keywords.hparams
    with pytest.raises(TypeError, match="a config or keyword arguments"):
        DALLE(by_keywords.hparams, vae=vae, dim=64)
    with pytest.raises(TypeError, match="unexpected keyword argument 'dimension'"):
        DALLE(vae=vae, dimension=32, depth=2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"conv_like": {"kernal_size": 3}}, "'conv_like' takes kernel_size, dilation; got kernal_size"),
        ({"axial_row": {"size": 3}}, "'axial_row' takes no options"),
        ({"sparse": {"block_size": 4}}, "attn_options for sparse, which attn_types does not use"),
        ({"conv_like": {"kernel_size": 4}}, "kernel_size must be odd"),
    ],
)
def test_bad_attn_options_are_named(vae, options, message):
    with pytest.raises(ValueError, match=message):
        small_dalle(vae, attn_types=("conv_like", "axial_row"), attn_options=options)
