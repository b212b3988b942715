"""Evaluation: the Fréchet distance against closed forms, CLIP-score with a trained CLIP, TorchScript
feature models, and evaluate.py end to end with its bad inputs."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cmd, small_vae
from torch import nn

from dalle_dist import CLIP, ByteTokenizer
from dalle_dist.checkpoint import save_checkpoint
from dalle_dist.data import ShapesDataset, to_pil
from dalle_dist.errors import UserError
from dalle_dist.evaluation import evaluate as evaluation
from dalle_dist.evaluation.clip_score import (
    clip_score,
    clip_scores,
    image_embeddings,
    image_features,
    load_feature_model,
    mismatched_score,
    text_embeddings,
)
from dalle_dist.evaluation.frechet import feature_statistics, frechet_distance, frechet_distance_of

# --------------------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    for dim in (1, 3, 16):
        mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
        s1, s2 = rng.uniform(0.1, 3, dim), rng.uniform(0.1, 3, dim)
        expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
        got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
        assert got == pytest.approx(expected, rel=1e-9)
        assert frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0, abs=1e-9)
    assert frechet_distance(0.0, 1.0, 1.0, 4.0) == pytest.approx(2.0)  # 1-D: 1^2 + (1 - 2)^2


def test_frechet_distance_of_feature_sets():
    """Full (correlated) covariances: a shift by v adds |v|^2; scaling about the mean by c gives
    (1 - c)^2 tr(S); a set against itself gives 0; the distance is symmetric."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))  # correlated features
    mu, sigma = feature_statistics(x)
    np.testing.assert_allclose(mu, x.mean(axis=0))
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False))
    v = rng.normal(size=6)
    assert frechet_distance_of(x, x + v) == pytest.approx(v @ v, rel=1e-6)
    assert frechet_distance_of(x, mu + 0.5 * (x - mu)) == pytest.approx(0.25 * np.trace(sigma), rel=1e-6)
    assert abs(frechet_distance_of(x, x)) < 1e-8 * np.trace(sigma)
    y = rng.normal(size=(300, 6))
    assert frechet_distance_of(x, y) == pytest.approx(frechet_distance_of(y, x), rel=1e-6)


def test_frechet_distance_with_singular_covariances():
    """Fewer samples than dimensions (a singular covariance): the result is real and finite, and a set
    against itself is still ~0."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(5, 16)), rng.normal(size=(7, 16)) + 1
    assert np.isfinite(frechet_distance_of(a, b)) and frechet_distance_of(a, b) > 0
    assert abs(frechet_distance_of(a, a)) < 1e-4 * np.trace(np.cov(a, rowvar=False))


def test_feature_statistics_needs_two_vectors():
    with pytest.raises(ValueError, match="at least 2 feature vectors, got 1"):
        feature_statistics(np.ones((1, 4)))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        feature_statistics(np.ones(4))
    with pytest.raises(ValueError, match="different shapes"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# --------------------------------------------------------------------------------------- CLIP-score

CAPTIONS = ["red", "green box", "a blue thing", "yellow dot"]


def tiny_clip(**overrides) -> CLIP:
    torch.manual_seed(0)
    kwargs = dict(
        dim_text=32, dim_image=32, dim_latent=16, num_text_tokens=ByteTokenizer().vocab_size,
        text_enc_depth=1, text_seq_len=16, text_heads=2, visual_enc_depth=1, visual_heads=2,
        visual_image_size=16, visual_patch_size=4, dim_head=16,
    )  # fmt: skip
    kwargs.update(overrides)
    return CLIP(**kwargs)


@pytest.fixture(scope="module")
def trained() -> tuple[CLIP, ByteTokenizer, torch.Tensor]:
    """A CLIP trained on four (caption, image) pairs until each image ranks its own caption first."""
    clip, tokenizer = tiny_clip(), ByteTokenizer()
    torch.manual_seed(1)
    images = torch.rand(len(CAPTIONS), 3, 16, 16)
    text = tokenizer.tokenize(CAPTIONS, clip.text_seq_len)
    opt = torch.optim.Adam(clip.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs ~5x slower on 2 threads when the cores are shared
    try:
        for _ in range(60):
            loss = clip(text, images, return_loss=True)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return clip.eval(), tokenizer, images


def test_clip_score_ranks_matching_captions_above_shuffled(trained):
    clip, tokenizer, images = trained
    similarity = image_embeddings(clip, images) @ text_embeddings(clip, tokenizer, CAPTIONS).t()
    # the precondition (training worked): every image's own caption is its best
    assert torch.equal(similarity.argmax(dim=1), torch.arange(len(CAPTIONS)))
    shuffled = CAPTIONS[1:] + CAPTIONS[:1]  # a derangement: no image keeps its caption
    matched, wrong = (
        clip_scores(clip, tokenizer, images, CAPTIONS),
        clip_scores(clip, tokenizer, images, shuffled),
    )
    assert (matched > wrong).all()  # follows from the precondition, image by image
    assert clip_score(clip, tokenizer, images, CAPTIONS) > clip_score(clip, tokenizer, images, shuffled)
    own = torch.eye(len(CAPTIONS), dtype=torch.bool)
    chance = mismatched_score(image_embeddings(clip, images), text_embeddings(clip, tokenizer, CAPTIONS), own)
    assert chance < float(matched.mean())
    # the score is the cosine of the model's own unit-norm latents, whatever the batching
    with torch.no_grad():
        direct = (clip.embed_image(images) * clip.embed_text(tokenizer.tokenize(CAPTIONS, 16))).sum(dim=-1)
    torch.testing.assert_close(matched, direct)
    torch.testing.assert_close(clip_scores(clip, tokenizer, images, CAPTIONS, batch_size=1), matched)
    assert float(matched.min()) >= -1 and float(matched.max()) <= 1


def test_mismatched_score_averages_over_the_other_prompts():
    images = torch.eye(2)
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    own = torch.tensor([[True, False, False], [False, True, True]])  # image 1 has two captions
    # image 0 vs prompts 1, 2: (0 + 0.6) / 2; image 1 vs prompt 0: 0
    assert mismatched_score(images, texts, own) == pytest.approx(0.15)
    assert mismatched_score(images, texts[:1], torch.ones(2, 1, dtype=torch.bool)) is None


def test_clip_scores_need_one_prompt_per_image(trained):
    clip, tokenizer, images = trained
    with pytest.raises(ValueError, match="4 images but 3 prompts"):
        clip_scores(clip, tokenizer, images, CAPTIONS[:3])


# --------------------------------------------------------------------------------------- feature models


class PooledConv(nn.Module):
    """A small image encoder returning pooled maps [B, 4, 1, 1] (flattened by image_features)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 1)


def save_scripted(module: nn.Module, path: Path) -> Path:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.9 marks TorchScript deprecated
        torch.jit.script(module).save(str(path))
    return path


def test_torchscript_feature_model(tmp_path):
    path = save_scripted(PooledConv(), tmp_path / "encoder.pt")
    model = load_feature_model(path)
    images = torch.rand(5, 3, 16, 16)
    features = image_features(model, images, 16, batch_size=2)
    assert features.shape == (5, 4) and features.dtype == np.float64
    with torch.no_grad():
        np.testing.assert_allclose(features, model(images).flatten(1).double().numpy(), rtol=1e-6)
    torch.save(PooledConv().state_dict(), tmp_path / "weights.pt")  # a pickle, not TorchScript
    with pytest.raises(UserError, match="not a TorchScript file"):
        load_feature_model(tmp_path / "weights.pt")
    with pytest.raises(UserError, match="does not exist"):
        load_feature_model(tmp_path / "missing.pt")
    with pytest.raises(UserError, match=r"returned \(5,\) for a batch of 5 images"):
        image_features(lambda x: x.mean(dim=(1, 2, 3)), images, 16)


# --------------------------------------------------------------------------------------- evaluate.py

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def write_generated(root: Path, per_prompt: int = 4, seed: int = 3) -> Path:
    """generate.py's layout: a folder per prompt with caption.txt, 0.png, 1.png, ... and grid.png."""
    shapes = ShapesDataset(image_size=16, length=64, seed=seed)
    for p, prompt in enumerate(PROMPTS):
        folder = root / prompt.replace(" ", "_")
        folder.mkdir(parents=True)
        (folder / "caption.txt").write_text(prompt + "\n")
        for i in range(per_prompt):
            to_pil(shapes[p * per_prompt + i][0]).save(folder / f"{i}.png")
        to_pil(torch.zeros(3, 40, 40)).save(folder / "grid.png")  # not a sample: ignored
    return root


def write_real(root: Path, n: int = 10, seed: int = 4) -> Path:
    """Images of the built-in dataset, every other one with its captions."""
    root.mkdir(parents=True)
    shapes = ShapesDataset(image_size=16, length=n, seed=seed)
    for i in range(n):
        image, captions = shapes[i]
        to_pil(image).save(root / f"{i}.png")
        if i % 2:
            (root / f"{i}.txt").write_text("\n".join(captions) + "\n")
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A CLIP trained by train_clip.py for a few steps, generated and real folders, a feature model."""
    tmp = tmp_path_factory.mktemp("evaluate")
    clip = tmp / "clip"
    flags = (
        "--dim_text 32 --dim_image 32 --dim_latent 8 --text_enc_depth 1 --visual_enc_depth 1 --text_heads 2 "
    )
    flags += (
        "--visual_heads 2 --dim_head 16 --text_seq_len 24 --image_size 16 --dataset_size 64 --batch_size 8 "
    )
    flags += "--bpe_vocab_size 300 --max_steps 4 --sample_every 100"
    run_cmd([sys.executable, ROOT / "train_clip.py", "--output", clip, *flags.split()])
    return {
        "clip": clip,
        "generated": write_generated(tmp / "generated"),
        "real": write_real(tmp / "real"),
        "encoder": save_scripted(PooledConv(), tmp / "encoder.pt"),
    }


def test_evaluate_end_to_end(inputs, tmp_path):
    out = tmp_path / "scores.json"
    proc = run_cmd(
        [
            sys.executable, ROOT / "evaluate.py", "--clip_path", inputs["clip"], "--generated",
            inputs["generated"], "--real", inputs["real"], "--feature_model", inputs["encoder"],
            "--feature_image_size", "16", "--json", out,
        ]
    )  # fmt: skip
    scores = json.loads(out.read_text())
    assert scores["generated"]["images"] == 12 and scores["real"] == {
        "dir": str(inputs["real"]), "images": 10, "with_captions": 5,
    }  # fmt: skip
    score = scores["clip_score"]
    assert score["images"] == 12 and score["prompts"] == 3 and -1 <= score["value"] <= 1
    assert set(score["per_prompt"]) == set(PROMPTS) and score["mismatched_prompts"] is not None
    assert scores["real_clip_score"]["images"] == 5
    tower, model = scores["frechet"]
    assert "CLIP image-tower" in tower["features"] and tower["dim"] == 8
    assert str(inputs["encoder"]) in model["features"] and model["dim"] == 4
    for fd in (tower, model):
        assert fd["generated_images"] == 12 and fd["real_images"] == 10 and fd["value"] > 0
    assert model["note"] is None and tower["note"] is None  # 10 images > 8 and > 4 dimensions
    # every printed figure names its features and counts
    lines = proc.stdout.splitlines()
    assert any(line.startswith("CLIP-score") and "12 generated images, 3 prompts" in line for line in lines)
    fd_lines = [line for line in lines if line.startswith("Fréchet distance")]
    assert len(fd_lines) == 2 and all("12 generated, 10 real images" in line for line in fd_lines)
    assert "CLIP image-tower" in fd_lines[0] and "encoder.pt" in fd_lines[1]


def test_evaluate_against_the_same_images_gives_zero_distance(inputs, tmp_path):
    """Real = copies of the generated images (one prompt folder given directly): both distances ~0; the
    feature-model figure is the Fréchet distance of the model's own features."""
    folder = inputs["generated"] / "a_red_circle"
    same = tmp_path / "same"
    same.mkdir()
    for image in folder.glob("[0-9].png"):
        shutil.copy(image, same / image.name)
    results = evaluation.evaluate(inputs["clip"], folder, same, inputs["encoder"], feature_image_size=16)
    assert results["generated"]["images"] == results["real"]["images"] == 4
    assert results["clip_score"]["prompts"] == 1
    assert results["clip_score"]["mismatched_prompts"] is None
    for fd in results["frechet"]:
        assert abs(fd["value"]) < 1e-6 and fd["note"] is not None  # 4 images <= dim: flagged
    real = evaluation.read_real(inputs["real"])
    generated = evaluation.read_generated(inputs["generated"])
    model = load_feature_model(inputs["encoder"])
    features = [image_features(model, s.images, 16) for s in (generated, real)]
    full = evaluation.evaluate(inputs["clip"], inputs["generated"], inputs["real"], inputs["encoder"], 16)
    assert full["frechet"][1]["value"] == pytest.approx(frechet_distance_of(*features), rel=1e-9)


def _empty(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _no_images(tmp: Path) -> Path:
    (tmp / "gen" / "a_cat").mkdir(parents=True)
    (tmp / "gen" / "a_cat" / "caption.txt").write_text("a cat\n")
    return tmp / "gen"


def _empty_caption(tmp: Path) -> Path:
    root = write_generated(tmp / "gen", per_prompt=1)
    (root / "a_red_circle" / "caption.txt").write_text("\n")
    return root


def _one_image(tmp: Path) -> Path:
    return write_real(tmp / "one", n=1)


def _broken_image(tmp: Path) -> Path:
    root = write_real(tmp / "broken", n=3)
    (root / "1.png").write_bytes(b"")
    return root


def _vae_checkpoint(tmp: Path) -> Path:
    return save_checkpoint(tmp / "vae", kind="vae", meta={"vae": {"kind": "discrete"}}, module=small_vae())


def _not_torchscript(tmp: Path) -> Path:
    torch.save({"w": torch.ones(2)}, tmp / "weights.pt")
    return tmp / "weights.pt"


def test_a_feature_model_alone_needs_no_clip(inputs, tmp_path, capsys):
    """Without --clip_path: the feature model's distance alone, the same figure as with a CLIP; with neither,
    one line that says what to give."""
    out = tmp_path / "scores.json"
    argv = ["--generated", inputs["generated"], "--real", inputs["real"], "--feature_image_size", "16"]
    proc = run_cmd(
        [sys.executable, ROOT / "evaluate.py", *argv, "--feature_model", inputs["encoder"], "--json", out]
    )
    scores = json.loads(out.read_text())
    assert scores["clip"] is None and scores["clip_score"] is None and scores["real_clip_score"] is None
    (fd,) = scores["frechet"]
    full = evaluation.evaluate(inputs["clip"], inputs["generated"], inputs["real"], inputs["encoder"], 16)
    assert fd == full["frechet"][1]
    assert "CLIP: none given" in proc.stdout and "CLIP-score," not in proc.stdout
    assert evaluation.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: nothing to score") and "--feature_model" in err and "\n" not in err


BAD = [
    ("generated_missing", {"--generated": lambda t: t / "nope"}, ["--generated", "does not exist"]),
    ("generated_empty", {"--generated": _empty}, ["holds no generated images", "no caption.txt"]),
    ("generated_no_images", {"--generated": _no_images}, ["1 prompt folder with caption.txt but no 0.png"]),
    ("generated_empty_caption", {"--generated": _empty_caption}, ["caption.txt is empty"]),
    ("real_missing", {"--real": lambda t: t / "nope"}, ["--real", "does not exist"]),
    ("real_empty", {"--real": _empty}, ["--real", "holds no images"]),
    ("real_one_image", {"--real": _one_image}, ["holds 1 image", "at least 2 images"]),
    ("real_broken_image", {"--real": _broken_image}, ["cannot read image", "1.png"]),
    (
        "not_a_clip",
        {"--clip_path": _vae_checkpoint},
        ["is a VAE checkpoint", "needs a CLIP one"],
    ),
    ("clip_missing", {"--clip_path": lambda t: t / "nope"}, ["does not exist"]),
    ("feature_model_pickle", {"--feature_model": _not_torchscript}, ["not a TorchScript file"]),
    ("json_folder_missing", {"--json": lambda t: t / "no" / "s.json"}, ["--json", "does not exist"]),
]


@pytest.mark.parametrize(("case", "change", "words"), BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_one_line(inputs, tmp_path, capsys, case, change, words):
    flags = {"--clip_path": inputs["clip"], "--generated": inputs["generated"], "--real": inputs["real"]}
    flags.update({flag: make(tmp_path) for flag, make in change.items()})
    argv = [str(a) for flag, value in flags.items() for a in (flag, value)]
    assert evaluation.main([*argv, "--feature_image_size", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert all(w in err for w in words), err


def test_degenerate_features_are_named_in_words_not_scipy_warnings():
    import warnings

    from dalle_dist.evaluation.evaluate import _frechet

    rng = np.random.default_rng(0)
    real = rng.normal(size=(40, 6))
    cases = {
        "all the same": np.ones((40, 6)),  # a model that draws one image
        "never change": np.concatenate([rng.normal(size=(40, 5)), np.zeros((40, 1))], axis=1),
        "use more than 6 images": rng.normal(size=(4, 6)),  # fewer images than dimensions
    }
    for words, generated in cases.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fd = _frechet("test features", generated, real)
        assert not caught, [str(w.message) for w in caught]
        assert fd["note"] and words in fd["note"] and "unreliable" in fd["note"], fd["note"]
    assert _frechet("test features", rng.normal(size=(40, 6)), real)["note"] is None
