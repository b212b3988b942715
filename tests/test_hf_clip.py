"""--clip_path hf:NAME / hf:DIR: a Hugging Face CLIP (OpenAI's ViT-B/32 in real use) ranks generate.py's
candidates and scores evaluate.py's images. No weights can be downloaded here: the tests write a tiny
``CLIPModel`` and ``CLIPProcessor`` with ``save_pretrained`` (the layout a downloaded model has) and check
every score against transformers' own forward (``CLIPProcessor``, then ``CLIPModel(...)``) on the same
files."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_DALLE, run_cmd, train_tiny_vae
from PIL import Image
from test_evaluation import write_generated, write_real

transformers = pytest.importorskip("transformers")

SIDE = 16  # the tiny DALL-E's and the evaluation test images' side: no resizing on either path


def write_tiny_hf_clip(folder: Path, side: int = SIDE) -> Path:
    """A random tiny CLIP in Hugging Face's save_pretrained layout, with a character-level CLIP tokenizer
    (byte-level BPE without merges) and an image processor at ``side`` px."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789.,":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], unk_token="<|endoftext|>")
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=40, bos_token_id=0, eos_token_id=1,
                pad_token_id=1)  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=side, patch_size=4)  # fmt: skip
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    images = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def reference_scores(folder: Path, files: list[Path], prompt: str) -> torch.Tensor:
    """Cosine similarity of each image file with ``prompt`` by transformers alone."""
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    pictures = [Image.open(f).convert("RGB") for f in files]
    inputs = processor(text=[prompt], images=pictures, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    return (out.image_embeds @ out.text_embeds.T)[:, 0]


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory) -> Path:
    return write_tiny_hf_clip(tmp_path_factory.mktemp("hf") / "tiny-clip")


@pytest.fixture(scope="module")
def dalle(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("hf-ranking")
    vae = train_tiny_vae(base / "vae")
    run_cmd(
        [sys.executable, ROOT / "train_dalle.py", "--vae_path", vae, "--output", base / "dalle",
         *TINY_DALLE.split(), "--batch_size", "8", "--max_steps", "2", "--sample_every", "100"]
    )  # fmt: skip
    return base / "dalle"


def test_generate_ranks_with_a_hugging_face_clip(tmp_path, hf_clip, dalle):
    out = tmp_path / "out"
    run_cmd(
        [sys.executable, ROOT / "generate.py", "--dalle_path", dalle, "--text", "a red circle", "--seed", "3",
         "--batch_size", "6", "--num_candidates", "6", "--keep", "6", "--clip_path", f"hf:{hf_clip}",
         "--outputs_dir", out]
    )  # fmt: skip
    record = json.loads((out / "a_red_circle" / "scores.json").read_text())
    assert record["clip_path"] == f"hf:{hf_clip}"  # every figure names the CLIP that made it
    scores = torch.tensor([image["clip_score"] for image in record["images"]])
    assert torch.equal(scores, scores.sort(descending=True).values)
    files = [out / "a_red_circle" / image["file"] for image in record["images"]]
    # ranked on the sampled tensors, checked on the 8-bit PNGs written from them
    torch.testing.assert_close(scores, reference_scores(hf_clip, files, "a red circle"), atol=0.02, rtol=0)


def test_evaluate_scores_with_a_hugging_face_clip(tmp_path, hf_clip):
    generated, real = write_generated(tmp_path / "generated"), write_real(tmp_path / "real")
    out = tmp_path / "scores.json"
    proc = run_cmd(
        [sys.executable, ROOT / "evaluate.py", "--clip_path", f"hf:{hf_clip}", "--generated", generated,
         "--real", real, "--json", out]
    )  # fmt: skip
    scores = json.loads(out.read_text())
    assert scores["clip"]["path"] == f"hf:{hf_clip}" and scores["clip"]["source"] == "Hugging Face"
    assert f"CLIP: hf:{hf_clip}\n" in proc.stdout
    per_prompt = scores["clip_score"]["per_prompt"]
    for prompt, value in per_prompt.items():
        folder = generated / prompt.replace(" ", "_")
        files = sorted(folder.glob("[0-9]*.png"))
        assert value == pytest.approx(float(reference_scores(hf_clip, files, prompt).mean()), abs=1e-5)
    assert scores["frechet"][0]["dim"] == 16  # the projection's width: the CLIP's own latent space


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("hf:", ["names no model", "hf:openai/clip-vit-base-patch32"]),
        ("hf:{tmp}/missing", ["cannot load the Hugging Face CLIP", "hf:DIR"]),
    ],
    ids=["empty", "missing"],
)
def test_bad_hugging_face_clips_are_one_line(tmp_path, dalle, spec, words):
    proc = run_cmd(
        [sys.executable, ROOT / "generate.py", "--dalle_path", dalle, "--text", "a", "--clip_path",
         spec.format(tmp=tmp_path), "--outputs_dir", tmp_path / "out"],
        expect=2,
    )  # fmt: skip
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error:") and all(w in line for w in words), line


class _Planted:
    """Unpickling this writes a file: proof that a loader ran code from the checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickled code ran"))


def test_a_pickled_hugging_face_checkpoint_is_refused_unexecuted(tmp_path, hf_clip, dalle):
    """A folder whose weights come only as pytorch_model.bin (a pickle) is refused: the loader reads
    safetensors alone, so the planted object never runs."""
    folder = tmp_path / "pickled"
    folder.mkdir()
    for f in hf_clip.iterdir():
        if f.name != "model.safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    marker = tmp_path / "ran.txt"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Planted(marker)}))
    proc = run_cmd(
        [sys.executable, ROOT / "generate.py", "--dalle_path", dalle, "--text", "a", "--clip_path",
         f"hf:{folder}", "--outputs_dir", tmp_path / "out"],
        expect=2,
    )  # fmt: skip
    assert not marker.exists()
    assert "cannot load the Hugging Face CLIP" in proc.stderr and "model.safetensors" in proc.stderr
