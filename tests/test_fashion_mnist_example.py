"""examples/fashion_mnist: idx parsing, captions, the missing-data message, the classifier's TorchScript
export and the judge, on tiny synthetic files (the real data set is not needed)."""

import gzip
import json
import struct
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cmd
from PIL import Image
from torch import nn

EXAMPLE = ROOT / "examples" / "fashion_mnist"
sys.path.insert(0, str(EXAMPLE))
import classifier as fm_classifier  # noqa: E402 (the example's modules live beside its scripts)
import prepare as fm_prepare  # noqa: E402

PREPARE = [sys.executable, str(EXAMPLE / "prepare.py")]
CLASSIFIER = [sys.executable, str(EXAMPLE / "classifier.py")]


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """The idx format: two zero bytes, the type code, the number of dimensions, big-endian uint32 sizes,
    then the values big-endian."""
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(fm_prepare.IDX_DTYPES[code]).tobytes()


def write_split(folder, split: str, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> None:
    image_stem, label_stem = fm_prepare.SPLITS[split]
    for stem, array in ((image_stem, images), (label_stem, labels)):
        data = idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10


def test_parse_idx_reads_big_endian_header_and_values(tmp_path):
    images, labels = synthetic(5)
    assert np.array_equal(fm_prepare.parse_idx(idx_bytes(images)), images)
    assert fm_prepare.parse_idx(idx_bytes(labels)).shape == (5,)
    # wider types are stored big-endian: 258 is bytes 00 00 01 02 on disk, read back as 258
    wide = np.array([[1, 258], [-3, 70000]], dtype=np.int32)
    raw = idx_bytes(wide, 0x0C)
    assert raw[:12] == bytes([0, 0, 0x0C, 2, 0, 0, 0, 2, 0, 0, 0, 2]) and raw[16:20] == b"\x00\x00\x01\x02"
    assert np.array_equal(fm_prepare.parse_idx(raw), wide)
    # gzipped and plain files read the same
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (tmp_path / "a").write_bytes(idx_bytes(images))
    assert np.array_equal(fm_prepare.read_idx(tmp_path / "a.gz"), fm_prepare.read_idx(tmp_path / "a"))


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x01\x00\x08\x01" + b"\x00" * 8, "first two bytes"),
        (b"\x00\x00\x42\x01\x00\x00\x00\x01\x00", "type code"),
        (b"\x00\x00\x08\x03\x00\x00", "header cut short"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "bytes"),  # 5 values announced, 2 given
    ],
)
def test_parse_idx_refuses_malformed_files(data, match):
    with pytest.raises(fm_prepare.BadIdx, match=match):
        fm_prepare.parse_idx(data)


def test_captions_are_natural_phrases_and_map_back():
    assert fm_prepare.caption(0) == "a photo of a t-shirt"
    assert fm_prepare.caption(1) == "a photo of a pair of trousers"
    assert fm_prepare.caption(9) == "a photo of an ankle boot"
    assert len(set(fm_prepare.CAPTIONS)) == len(fm_prepare.CLASSES) == 10
    assert len(set(fm_prepare.SLUGS)) == 10 and all(" " not in s and "/" not in s for s in fm_prepare.SLUGS)
    for label, text in enumerate(fm_prepare.CAPTIONS):
        assert fm_prepare.label_of_caption(text) == label
        assert fm_prepare.label_of_caption(text.replace(" ", "_")) == label  # generate.py's folder names
    assert fm_prepare.label_of_caption("a photo of a red circle") is None


def test_to_rgb32_pads_without_resampling():
    images, _ = synthetic(3)
    rgb = fm_prepare.to_rgb32(images)
    assert rgb.shape == (3, 32, 32, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[:, 2:30, 2:30, 0], images)  # every original pixel kept
    assert np.array_equal(rgb[..., 0], rgb[..., 2])  # grey in R, G and B
    border = np.ones((32, 32), dtype=bool)
    border[2:30, 2:30] = False
    assert not rgb[:, border].any()  # black padding, like the data's background


def test_prepare_writes_captioned_folders_and_shards(tmp_path):
    data = tmp_path / "idx"
    data.mkdir()
    train_images, train_labels = synthetic(23, seed=1)
    test_images, test_labels = synthetic(12, seed=2)
    write_split(data, "train", train_images, train_labels)
    write_split(data, "test", test_images, test_labels, gz=False)  # unzipped files work too
    out = tmp_path / "out"
    done = run_cmd(
        [
            *PREPARE,
            "--data_dir",
            data,
            "--out",
            out,
            "--train_limit",
            20,
            "--maxcount",
            8,
            "--reference_per_class",
            1,
        ]
    )
    assert "train: 20 images" in done.stdout and "test: 12 images" in done.stdout
    train = sorted((out / "train").glob("*.png"))
    # flat, in the files' order (classes mixed in the folder, whatever order make_shards writes)
    assert [p.name for p in train[:3]] == ["00000-t-shirt.png", "00001-trousers.png", "00002-pullover.png"]
    assert len(train) == 20 and len(list((out / "test").glob("*.png"))) == 12
    with Image.open(train[0]) as img:
        assert img.size == (32, 32) and img.mode == "RGB"
        assert np.array_equal(np.asarray(img)[2:30, 2:30, 0], train_images[0])
    assert train[0].with_suffix(".txt").read_text() == "a photo of a t-shirt\n"
    assert (out / "train" / "00019-ankle_boot.txt").read_text() == "a photo of an ankle boot\n"
    assert len(list((out / "shards").glob("shard-*.tar"))) == 3  # 20 samples, 8 per shard
    assert (out / "prompts.txt").read_text().strip().split("|") == list(fm_prepare.CAPTIONS)
    # the reference set: generate.py's layout, one real training image per class
    bag = out / "reference" / "a_photo_of_a_bag"
    assert (bag / "caption.txt").read_text() == "a photo of a bag\n"
    assert sorted(p.name for p in bag.iterdir()) == ["0.png", "caption.txt"]
    with Image.open(bag / "0.png") as img:
        assert np.array_equal(np.asarray(img)[2:30, 2:30, 1], train_images[8])
    assert len(list((out / "reference").glob("*/*.png"))) == 10


@pytest.mark.parametrize("command", [[*PREPARE, "--out", "OUT"], [*CLASSIFIER, "train", "--out", "OUT"]])
def test_missing_data_fails_in_one_line_naming_the_apt_package(tmp_path, command):
    command = [str(tmp_path / "out") if c == "OUT" else c for c in command]
    done = run_cmd([*command, "--data_dir", tmp_path / "nothing"], expect=2)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: Fashion-MNIST not found")
    assert "apt-get install dataset-fashion-mnist" in lines[0]
    assert not (tmp_path / "out").exists()


def test_classifier_shapes_and_torchscript_export_match(tmp_path):
    torch.manual_seed(0)
    model = fm_classifier.FashionCNN().eval()
    images = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        logits, features = model(images), model.features(images)
    assert logits.shape == (5, 10) and features.shape == (5, fm_classifier.FEATURE_DIM)
    classifier_path, features_path = fm_classifier.export(model, tmp_path / "cls")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted, extractor = torch.jit.load(str(classifier_path)), torch.jit.load(str(features_path))
    torch.testing.assert_close(scripted(images), logits)
    torch.testing.assert_close(scripted.features(images), features)
    torch.testing.assert_close(extractor(images), features)
    # evaluate.py's --feature_model path reads it as an image encoder at 32 px
    from dalle_dist.evaluation.clip_score import image_features, load_feature_model

    encoded = image_features(load_feature_model(features_path), images, image_size=32, batch_size=2)
    np.testing.assert_allclose(encoded, features.double().numpy(), rtol=1e-5, atol=1e-6)
    # the network reads grey: a tint that keeps the channel mean leaves the prediction alone
    tinted = (
        images.mean(dim=1, keepdim=True).repeat(1, 3, 1, 1) + torch.tensor([0.05, -0.05, 0.0])[:, None, None]
    )
    torch.testing.assert_close(model(tinted), model(images.mean(dim=1, keepdim=True).repeat(1, 3, 1, 1)))


def test_train_model_runs_briefly():
    images, labels = synthetic(40)
    model = fm_classifier.train_model(images, labels.astype(np.int64), epochs=1, batch_size=16)
    assert not model.training
    assert fm_classifier.predict(model, torch.rand(3, 3, 32, 32)).shape == (3,)


class BrightnessModel(nn.Module):
    """A stand-in judge: the class is the image's mean brightness in steps of 20/255."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        label = (images.mean(dim=(1, 2, 3)) * 255 / 20).round().long().clamp(0, 9)
        return nn.functional.one_hot(label, 10).float()


def write_outputs(root, prompts: dict[str, list[int]], caption_file: bool = True) -> None:
    """generate.py's layout: root/<prompt with _>/0.png ... (+ caption.txt), images of given classes."""
    for prompt, labels in prompts.items():
        folder = root / prompt.replace(" ", "_")
        folder.mkdir(parents=True)
        if caption_file:
            (folder / "caption.txt").write_text(prompt + "\n")
        for n, label in enumerate(labels):
            Image.new("RGB", (32, 32), (label * 20,) * 3).save(folder / f"{n}.png")
        Image.new("RGB", (64, 64)).save(folder / "grid.png")  # not a numbered image: not judged


def test_judge_scores_each_prompt_against_its_class(tmp_path):
    outputs = tmp_path / "outputs"
    write_outputs(
        outputs, {"a photo of a t-shirt": [0, 0, 8], "a photo of a bag": [8, 8], "a red circle": [1]}
    )
    write_outputs(outputs, {"a photo of an ankle boot": [9, 3, 3, 9]}, caption_file=False)
    result = fm_classifier.judge(BrightnessModel(), outputs)
    per = result["per_prompt"]
    assert per["a photo of a t-shirt"]["accuracy"] == pytest.approx(2 / 3)
    assert per["a photo of a t-shirt"]["predicted"] == {"T-shirt/top": 2, "Bag": 1}
    assert per["a photo of a bag"]["accuracy"] == 1.0
    assert per["a photo of an ankle boot"] == {  # prompt read from the folder name
        "class": "Ankle boot",
        "images": 4,
        "correct": 2,
        "accuracy": 0.5,
        "predicted": {"Ankle boot": 2, "Dress": 2},
    }
    assert result["overall"] == {"images": 9, "correct": 6, "accuracy": 6 / 9, "chance": 0.1}
    assert result["skipped_prompts"] == ["a red circle"]
    assert "class accuracy of generated images: 66.7% (6/9" in "\n".join(fm_classifier.judge_lines(result))


def test_judge_cli_with_an_exported_classifier(tmp_path):
    torch.manual_seed(0)
    model_path, _ = fm_classifier.export(fm_classifier.FashionCNN().eval(), tmp_path / "cls")
    outputs = tmp_path / "outputs"
    write_outputs(outputs, {"a photo of a dress": [1, 2, 3], "a photo of a coat": [4, 5]})
    report = tmp_path / "judge.json"
    done = run_cmd([*CLASSIFIER, "judge", "--model", model_path, "--outputs", outputs, "--json", report])
    assert "class accuracy of generated images:" in done.stdout
    result = json.loads(report.read_text())
    assert result["overall"]["images"] == 5 and set(result["per_prompt"]) == {
        "a photo of a dress",
        "a photo of a coat",
    }
    # the CLI's figures are the scripted model's own
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        direct = fm_classifier.judge(torch.jit.load(str(model_path)), outputs)
    assert direct == result
    # nothing to judge: one error line, exit 2
    empty = tmp_path / "empty"
    write_outputs(empty, {"a red circle": [1]})
    done = run_cmd([*CLASSIFIER, "judge", "--model", model_path, "--outputs", empty], expect=2)
    assert done.stderr.strip().startswith("error: ") and len(done.stderr.strip().splitlines()) == 1


def test_reconstruct_writes_the_tokenizers_pictures_in_the_same_layout(tmp_path):
    """reconstruct.py: every numbered picture through the VAE's hard codes, captions beside them; what it
    writes is what the VAE decodes from the picture's tokens (up to 8-bit rounding)."""
    from conftest import train_tiny_vae

    from dalle_dist.checkpoint import load_vae
    from dalle_dist.data.transforms import load_image

    vae_run = train_tiny_vae(tmp_path / "vae")
    images, out = tmp_path / "reference", tmp_path / "reconstructed"
    write_outputs(images, {"a photo of a bag": [8, 8], "a photo of a coat": [4]})
    done = run_cmd([sys.executable, EXAMPLE / "reconstruct.py", "--vae_path", vae_run, "--images", images,
                    "--out", out])  # fmt: skip
    assert "3 pictures through the tokenizer" in done.stdout
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == [
        "a_photo_of_a_bag/0.png", "a_photo_of_a_bag/1.png", "a_photo_of_a_bag/caption.txt",
        "a_photo_of_a_coat/0.png", "a_photo_of_a_coat/caption.txt",
    ]  # fmt: skip
    assert (out / "a_photo_of_a_coat" / "caption.txt").read_text() == "a photo of a coat\n"
    vae, _ = load_vae(vae_run)
    vae.eval()
    picture = load_image(images / "a_photo_of_a_coat" / "0.png", vae.image_size)[None]
    with torch.no_grad():
        expected = vae.denormalize(vae.decode(vae.get_codebook_indices(picture))).clamp(0, 1)[0]
    got = torch.from_numpy(np.asarray(Image.open(out / "a_photo_of_a_coat" / "0.png"), dtype=np.float32))
    assert got.shape == (vae.image_size, vae.image_size, 3)
    torch.testing.assert_close(got.permute(2, 0, 1) / 255, expected, atol=0.5 / 255 + 1e-6, rtol=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cmd([sys.executable, EXAMPLE / "reconstruct.py", "--vae_path", vae_run, "--images", empty,
                    "--out", out], expect=2)  # fmt: skip
    assert "holds no .png pictures" in proc.stderr and "Traceback" not in proc.stderr


def test_summarize_reads_what_run_sh_writes(tmp_path):
    import summarize as fm_summarize

    run = tmp_path / "run"
    (run / "classifier").mkdir(parents=True)
    (run / "times.tsv").write_text(
        "stage\tseconds\tchain\nprepare\t39\tmain\ntrain_clip\t300\tside\ntotal\t2000\t-\n"
    )
    (run / "machine.txt").write_text("start 2026-01-01T00:00:00Z load 2.00 2.00 2.00\n")
    (run / "command.txt").write_text("examples/fashion_mnist/run.sh\nQUICK=1\n")
    per_class = {name: 0.9 for name in fm_prepare.CLASSES}
    classifier = {"test_accuracy": 0.92, "test_images": 10000, "train_images": 60000, "epochs": 3}
    (run / "classifier" / "classifier.json").write_text(
        json.dumps({**classifier, "per_class_test_accuracy": per_class})
    )
    outputs = tmp_path / "outputs"
    write_outputs(outputs, {"a photo of a bag": [8, 8, 1]})
    (run / "judge_ranked.json").write_text(json.dumps(fm_classifier.judge(BrightnessModel(), outputs)))
    frechet = [{"value": 0.5}, {"value": 12.0}]
    score = {"value": 0.8, "mismatched_prompts": 0.01}
    evaluation = {"generated": {"images": 3}, "real": {"images": 10}, "clip_score": score, "frechet": frechet}
    (run / "eval_ranked.json").write_text(
        json.dumps({**evaluation, "real_clip_score": {**score, "images": 10}})
    )
    (run / "eval_reconstructed.json").write_text(
        json.dumps({**evaluation, "frechet": [{"value": 0.1}, {"value": 4.5}]})
    )
    done = run_cmd([sys.executable, EXAMPLE / "summarize.py", run])
    text = done.stdout
    assert (
        "| reference through the VAE's tokens (the tokenizer's floor) | 3 | 0.8000 | 0.0100 | 0.1000 "
        "| 4.5000 |" in text
    )
    assert "| train_clip | 5 min 00 s | alongside the main chain |" in text
    assert "**92.00%** test accuracy" in text
    assert "| a photo of a bag | 67% of 3 |" in text and "| overall | **66.7%** of 3 |" in text
    assert "| generated, CLIP-ranked | 3 | 0.8000 | 0.0100 | 0.5000 | 12.0000 | 10 |" in text
    assert json.loads((run / "summary.json").read_text())["seconds"]["total"] == 2000
    assert "\n".join(fm_summarize.summarize(run)[0]) == text.rstrip("\n")
