"""The quantizers of a DiscreteVAE (models/quantizers.py): shapes, gradients to the encoder, usage figures,
dead-code restarts, save/load, and DALL-E training and sampling on each."""

import copy
import inspect
import json

import pytest
import torch
from conftest import small_dalle

from dalle_dist.checkpoint import describe_vae, load_vae, save_checkpoint
from dalle_dist.models.quantizers import QUANTIZERS, FiniteScalarQuantizer, VectorQuantizer
from dalle_dist.models.vae import QUANTIZER_OPTIONS, DiscreteVAE
from dalle_dist.training.codebook import CodebookUsage

SMALL = dict(image_size=16, num_layers=2, codebook_dim=16, hidden_dim=8)
CODEBOOK = {"gumbel": dict(num_tokens=64), "vq": dict(num_tokens=64), "fsq": dict(fsq_levels=[4, 4, 4])}
CODEBOOK["lfq"] = dict(lfq_bits=6)


def make_vae(quantizer: str, **overrides) -> DiscreteVAE:
    torch.manual_seed(0)
    return DiscreteVAE(**{**SMALL, **CODEBOOK[quantizer], "quantizer": quantizer, **overrides})


def images(batch: int = 4) -> torch.Tensor:
    return torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_shapes_ids_and_decode(quantizer):
    vae = make_vae(quantizer)
    assert vae.num_tokens == 64
    img = images()
    loss, out = vae(img, return_loss=True, return_recons=True)
    assert out.shape == img.shape and loss.dim() == 0 and torch.isfinite(loss)
    ids = vae.get_codebook_indices(img)
    assert ids.shape == (4, 16) and ids.dtype == torch.long
    assert ids.min() >= 0 and ids.max() < vae.num_tokens
    assert vae.decode(ids).shape == img.shape
    # ids come from the hard codes the decoder would read: decoding them equals the eval forward's output
    # (the gumbel dVAE's forward mixes soft codes, so only the others can be compared this way)
    if quantizer != "gumbel":
        vae.eval()
        torch.testing.assert_close(vae.decode(ids), vae(img), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_ids_update_nothing(quantizer):
    """Tokenising in training mode (DALL-E's frozen VAE, sample grids) leaves every buffer as it was."""
    vae = make_vae(quantizer)
    vae(images(), return_loss=True)  # k-means initialised
    before = copy.deepcopy(vae.state_dict())
    vae.train()
    vae.get_codebook_indices(images(8))
    assert vae.training and vae.codebook.training
    after = vae.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_gradients_reach_the_encoder(quantizer):
    """Straight-through (or rotation-trick) gradients pass the quantizer: every encoder layer gets one."""
    vae = make_vae(quantizer)
    vae(images(), return_loss=True).backward()
    for name, p in vae.encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name, p in vae.decoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_usage_figures_on_a_constructed_batch():
    """4 codes of 8 used, counts 2/2/2/2 -> used 0.5, perplexity 4; the window drops the oldest batch (the
    training hook that feeds it is tested below)."""
    usage = CodebookUsage(8, window=2)
    usage.update(torch.tensor([[0, 1], [2, 3]]))
    usage.update(torch.tensor([[0, 1, 2, 3]]))
    figures = usage.figures()
    assert float(figures["codebook_used"]) == 0.5
    assert float(figures["codebook_perplexity"]) == pytest.approx(4.0)
    usage.update(torch.tensor([5, 5, 5, 5]))  # the first batch leaves the window
    assert float(usage.figures()["codebook_used"]) == 5 / 8
    assert float(usage.figures()["codebook_perplexity"]) == pytest.approx(
        torch.distributions.Categorical(torch.tensor([1, 1, 1, 1, 0, 4, 0, 0.0])).entropy().exp().item()
    )


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_training_hook_counts_the_quantizers_ids(quantizer):
    """The usage figures count the ids the training forward picked: a quantizer's eval ids taken just
    before a training step (vq: after the k-means step, and before the EMA moves the codes)."""
    from dalle_dist.training.vae_job import Temperature, VAETask

    vae = make_vae(quantizer)
    task = VAETask(vae, {}, Temperature())
    img = images()
    task.loss(vae, img, 0)  # vq: k-means initialises the codebook on this first batch
    first = task.usage.counts.clone()
    assert int(first.sum()) == img.shape[0] * 16
    vae.eval()
    expected = torch.bincount(vae.get_codebook_indices(img).flatten(), minlength=vae.num_tokens)
    vae.train()
    task.loss(vae, img, 1)
    assert torch.equal(task.usage.counts - first, expected)


def test_dead_code_restart_revives_a_code():
    torch.manual_seed(0)
    q = VectorQuantizer(dim=16, num_codes=8, codebook_dim=4, kmeans_init=False, dead_code_threshold=1.0)
    codebook = q.module._codebook
    codebook.cluster_size.fill_(100.0)
    codebook.cluster_size[0, 3] = 0.0  # code 3: never picked lately
    z = torch.randn(2, 16, 4, 4)
    before = codebook.embed[0, 3].clone()
    q.train()
    q(z)
    assert int(q.restarted) == 1
    assert not torch.equal(codebook.embed[0, 3], before), "the dead code was replaced"
    ids = q.indices(z)
    assert (ids == 3).any(), "the restarted code is a vector of the batch: that vector now picks it"
    q(z)
    assert int(q.restarted) == 1, "a live code is not restarted again"
    clone = copy.deepcopy(q)  # a copy counts its own restarts, on its own codebook
    clone.module._codebook.cluster_size[0, 5] = 0.0
    clone(z)
    assert (int(clone.restarted), int(q.restarted)) == (2, 1)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_save_and_load_identical(quantizer, tmp_path):
    vae = make_vae(quantizer)
    opt = torch.optim.Adam(vae.parameters(), 1e-3)
    for _ in range(3):  # EMA codebook and k-means state are trained too
        loss = vae(images(), return_loss=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    cfg = json.loads(json.dumps(vae.config()))
    expected_keys = set(inspect.signature(DiscreteVAE).parameters)
    expected_keys -= {k for keys in QUANTIZER_OPTIONS.values() for k in keys} - set(
        QUANTIZER_OPTIONS[quantizer]
    )
    expected_keys -= {"quantizer"} if quantizer == "gumbel" else set()
    assert set(cfg) == expected_keys
    meta = {"vae": describe_vae(vae), "data": {}}
    path = save_checkpoint(tmp_path / "vae", module=vae, kind="vae", meta=meta)
    loaded, _ = load_vae(path)
    assert loaded.config() == vae.config()
    a, b = vae.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    vae.eval(), loaded.eval()
    img = images(6)
    ids = vae.get_codebook_indices(img)
    assert torch.equal(loaded.get_codebook_indices(img), ids)
    assert torch.equal(loaded.decode(ids), vae.decode(ids))


def test_fsq_noise_dropout_and_symmetric_levels(tmp_path):
    """Noise dropout perturbs the codes the decoder reads in training only, never the ids; a checkpoint
    written before the two options existed loads as the plain FSQ it was trained as."""
    vae = make_vae("fsq", fsq_noise_dropout=0.5)
    img = images()
    z = vae.encoder(vae.norm(img))
    vae.train()
    noisy = vae.codebook(z)
    assert torch.equal(noisy.indices, vae.codebook(z).indices)
    vae.eval()
    clean = vae.codebook(z)
    assert torch.equal(noisy.indices, clean.indices) and torch.equal(clean.codes, vae.codebook(z).codes)
    assert not torch.allclose(noisy.codes, clean.codes), "training codes carry noise"
    assert torch.equal(vae.codebook.lookup(clean.indices), clean.codes)
    # the symmetric grid and the plain one place their levels differently: the same ids decode otherwise
    plain = make_vae("fsq", fsq_symmetric=False, fsq_noise_dropout=0.0)
    plain.load_state_dict(vae.state_dict())
    assert not torch.equal(plain.codebook.lookup(clean.indices), clean.codes)
    old = {k: v for k, v in plain.config().items() if k not in ("fsq_symmetric", "fsq_noise_dropout")}
    meta = {"vae": {"kind": "discrete", "config": old}, "data": {}}
    path = save_checkpoint(tmp_path / "old", module=plain, kind="vae", meta=meta)
    loaded, _ = load_vae(path)
    assert loaded.config() == plain.config()
    with pytest.raises(ValueError, match="noise dropout needs symmetric levels"):
        make_vae("fsq", fsq_symmetric=False, fsq_noise_dropout=0.3)


def test_lfq_entropy_gradient_reaches_a_one_sided_bit(tmp_path):
    """A sign bit whose values all start on one side at the scale an untrained encoder gives (~0.1): at
    vector-quantize-pytorch's temperature 0.01 the entropy loss's gradient on it is nil (the bit would
    never flip); at the default 0.3 it pushes the bit towards the other sign. A checkpoint written before
    the option loads with the 0.01 it was trained with."""
    gen = torch.Generator().manual_seed(0)
    z = 0.1 * torch.randn(8, 4, 4, 4, generator=gen).sign()
    z[:, 0] = 0.1 + 0.02 * torch.rand(8, 4, 4, generator=gen)  # bit 0: positive everywhere
    pushes = {}
    for temperature in (0.01, None):  # None: the default
        torch.manual_seed(0)
        chosen = {} if temperature is None else {"lfq_temperature": temperature}
        vae = DiscreteVAE(**{**SMALL, "codebook_dim": 4, "lfq_bits": 4, "quantizer": "lfq",
                             "commitment_weight": 0.0, **chosen})  # fmt: skip
        vae.train()
        leaf = z.clone().requires_grad_()
        vae.codebook(leaf).loss.backward()
        pushes[temperature] = float(leaf.grad[:, 0].sum())  # d loss / d (a shift of all of bit 0)
    assert abs(pushes[0.01]) < 1e-12
    assert pushes[None] > 1e-4  # gradient descent lowers bit 0: towards the other sign
    old = {k: v for k, v in vae.config().items() if k != "lfq_temperature"}
    meta = {"vae": {"kind": "discrete", "config": old}, "data": {}}
    loaded, _ = load_vae(save_checkpoint(tmp_path / "old", module=vae, kind="vae", meta=meta))
    assert loaded.config() == {**vae.config(), "lfq_temperature": 0.01}


def test_fsq_entropy_reads_the_librarys_grid_and_spreads_the_codes(tmp_path):
    """The entropy term's level coordinates round to the library's own ids (symmetric and plain levels);
    descending it moves positions that all share one code onto many; it is off by default, zero outside
    training, and an FSQ checkpoint written before it loads without it."""
    z = 2 * torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    for symmetric in (True, False):
        q = FiniteScalarQuantizer(8, [8, 5, 4], symmetric=symmetric, entropy_weight=0.1)
        u = q.level_coordinates(z)
        levels = (u + 0.5).floor() if symmetric else u.round()
        ids = (levels.long() * q.module._basis.long()).sum(-1)
        assert torch.equal(ids, q(z).indices.flatten())
    torch.manual_seed(0)
    q = FiniteScalarQuantizer(8, [4, 4, 4], symmetric=True, entropy_weight=1.0).train()
    leaf = (0.3 + 0.05 * torch.randn(4, 8, 4, 4)).requires_grad_()
    opt = torch.optim.SGD([leaf], lr=1.0)
    assert q(leaf).indices.unique().numel() == 1
    for _ in range(100):
        opt.zero_grad()
        q(leaf).loss.backward()
        opt.step()
    assert q(leaf).indices.unique().numel() >= 8
    q.eval()
    assert float(q(leaf).loss) == 0.0
    vae = make_vae("fsq")
    assert vae.codebook.entropy_weight == 0.0 and vae(images(), return_loss=True).item() > 0
    old = {k: v for k, v in vae.config().items() if not k.startswith("fsq_entropy")}
    meta = {"vae": {"kind": "discrete", "config": old}, "data": {}}
    loaded, _ = load_vae(save_checkpoint(tmp_path / "old", module=vae, kind="vae", meta=meta))
    assert loaded.config() == vae.config()
    with pytest.raises(ValueError, match="works up to 16384 codes"):
        make_vae("fsq", fsq_levels=[8, 8, 8, 8, 8], fsq_entropy_weight=0.1)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_dalle_trains_and_samples(quantizer):
    vae = make_vae(quantizer)
    dalle = small_dalle(vae)
    assert dalle.num_image_tokens == 64 and dalle.image_seq_len == 16
    opt = torch.optim.Adam([p for p in dalle.parameters() if p.requires_grad], 1e-3)
    text = torch.randint(1, 50, (2, 6))
    img = images(2)
    losses = []
    for _ in range(4):
        loss = dalle(text, img, return_loss=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in vae.parameters()), "the VAE stays frozen"
    out = dalle.generate_images(text, filter_thres=0.9)
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(quantizer="nope"), "unknown quantizer"),
        (dict(quantizer="fsq", fsq_levels=[8, 2]), ">= 3"),
        (dict(quantizer="fsq", fsq_levels=[8, 5], num_tokens=64), "does not match"),
        (dict(quantizer="fsq", num_tokens=100), "no recommended FSQ levels"),
        (dict(quantizer="lfq", num_tokens=100), "power-of-2"),
        (dict(quantizer="lfq", lfq_bits=6, num_tokens=32), "does not match"),
        (dict(quantizer="vq", fsq_levels=[8, 5]), "fsq_levels is for the fsq quantizer"),
    ],
)
def test_bad_codebooks_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DiscreteVAE(**{**SMALL, **kwargs})


def test_codebook_sizes_follow_levels_and_bits():
    assert DiscreteVAE(**SMALL, quantizer="fsq").num_tokens == 1000  # 8,5,5,5
    assert DiscreteVAE(**SMALL, quantizer="fsq", num_tokens=4096).config()["fsq_levels"] == [7, 5, 5, 5, 5]
    assert DiscreteVAE(**SMALL, quantizer="lfq").num_tokens == 1024
    assert DiscreteVAE(**SMALL, quantizer="lfq", num_tokens=256).config()["lfq_bits"] == 8
    assert DiscreteVAE(**SMALL).num_tokens == DiscreteVAE(**SMALL, quantizer="vq").num_tokens == 512


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_channels_last_vae_reads_its_inputs_so_and_agrees(quantizer):
    """train_vae.py --bf16 moves the VAE to channels-last: the encoder then gets channels-last pictures, and
    losses, ids and decodes agree with the contiguous VAE."""
    # (vq without k-means: an uninitialised k-means codebook is all zeros, its ids ties)
    extra = {"kmeans_init": False} if quantizer == "vq" else {}
    vae, fast = (
        make_vae(quantizer, **extra),
        make_vae(quantizer, **extra).to(memory_format=torch.channels_last),
    )
    vae.eval(), fast.eval()
    seen = []
    fast.encoder[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    img = images()
    ids = vae.get_codebook_indices(img)
    assert torch.equal(fast.get_codebook_indices(img), ids)
    assert seen and seen[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast.decode(ids), vae.decode(ids), rtol=1e-5, atol=1e-5)
    torch.manual_seed(3)
    a = vae(img, return_loss=True)
    torch.manual_seed(3)
    torch.testing.assert_close(fast(img, return_loss=True), a, rtol=1e-5, atol=1e-6)


def test_a_library_that_changed_dead_code_restarts_is_refused(monkeypatch):
    # vector-quantize-pytorch 1.34 reads the dead-code threshold as a ratio of the mean cluster size; built on
    # it, our restart counting would crash mid-training and old checkpoints would restart other codes
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda name: "1.34.1" if name == "vector-quantize-pytorch" else real(name),
    )
    with pytest.raises(ImportError, match=r"vector-quantize-pytorch 1\.34\.1 .*<1\.33"):
        VectorQuantizer(dim=8, num_codes=16, codebook_dim=4)
    monkeypatch.undo()
    assert VectorQuantizer(dim=8, num_codes=16, codebook_dim=4).num_codes == 16
