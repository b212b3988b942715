"""The shapes judge reads colour, shape and background off pictures, clean and degraded."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from dalle_dist.data.synthetic import BACKGROUNDS, COLORS, ShapeAttributes, ShapesDataset, render
from dalle_dist.data.transforms import pil_to_tensor
from dalle_dist.evaluation import JudgeResult, judge_shape, matches
from dalle_dist.evaluation.shapes_judge import parse_caption

ITEMS = 300


def accuracy(dataset: ShapesDataset, degrade=None) -> dict[str, float]:
    """Share of the first ITEMS items read right; ``degrade`` maps the item's PIL picture to a tensor."""
    hits = {"color": 0, "shape": 0, "background": 0, "single": 0, "matches": 0}
    for i in range(ITEMS):
        image, captions = dataset[i]
        attrs = dataset.attributes(i)
        result = judge_shape(degrade(render(attrs, dataset.image_size)) if degrade else image)
        hits["color"] += result.color == attrs.color
        hits["shape"] += result.shape == attrs.shape
        hits["background"] += result.background == attrs.background
        hits["single"] += result.single
        hits["matches"] += all(matches(result, caption) for caption in captions)
    return {k: v / ITEMS for k, v in hits.items()}


@pytest.mark.parametrize("image_size", [32, 64])
def test_judge_reads_clean_items(image_size):
    scores = accuracy(ShapesDataset(image_size, seed=123))
    assert min(scores.values()) >= 0.98, scores


def test_judge_survives_noise_and_blur():
    rng = np.random.default_rng(0)

    def degrade(picture):
        blurred = np.asarray(picture.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32) / 255
        noisy = np.clip(blurred + rng.normal(0, 0.05, blurred.shape), 0, 1)
        return torch.from_numpy(noisy.astype(np.float32)).permute(2, 0, 1)

    scores = accuracy(ShapesDataset(32, seed=7), degrade)
    assert min(scores.values()) >= 0.9, scores


def canvas(background="black", size=64):
    return Image.new("RGB", (size, size), BACKGROUNDS[background])


@pytest.mark.parametrize("background", list(BACKGROUNDS))
def test_blank_image_has_no_shape(background):
    result = judge_shape(canvas(background))
    assert (result.color, result.shape, result.single) == (None, None, False)
    assert result.background == background
    rng = np.random.default_rng(0)
    for sigma in (0.03, 0.2):  # the foreground threshold follows the noise: grain is not a shape
        noisy = np.asarray(canvas(background), dtype=np.float32) / 255 + rng.normal(0, sigma, (64, 64, 3))
        result = judge_shape(torch.from_numpy(np.clip(noisy, 0, 1).astype(np.float32)).permute(2, 0, 1))
        assert (result.color, result.single) == (None, False), (sigma, result)


def test_a_speck_alone_is_not_a_shape():
    image = canvas("gray")
    ImageDraw.Draw(image).rectangle((30, 30, 32, 32), fill=COLORS["red"])  # 9 pixels of 4096
    result = judge_shape(image)
    assert (result.color, result.shape, result.single) == (None, None, False)


@pytest.mark.parametrize(
    ("second", "box"), [("blue", (38, 38, 60, 60)), ("red", (38, 38, 60, 60)), ("red", (48, 48, 60, 60))]
)
def test_two_shapes_are_not_single(second, box):
    image = canvas("white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((2, 2, 34, 34), fill=COLORS["red"])
    draw.ellipse(box, fill=COLORS[second])  # the last one: a small circle beside a large square
    result = judge_shape(image)
    assert not result.single
    assert not matches(result, "a red square")


def test_specks_are_ignored():
    attrs = ShapeAttributes("large", "green", "circle", "gray", (10, 12, 42, 44))
    image = np.asarray(render(attrs, 64)).copy()
    image[2, 60] = image[50, 3] = COLORS["pink"]  # two single-pixel specks
    result = judge_shape(Image.fromarray(image))
    assert (result.color, result.shape, result.background, result.single) == ("green", "circle", "gray", True)


def test_tensor_pil_and_large_inputs_agree():
    attrs = ShapeAttributes("small", "purple", "triangle", "gray", (5, 9, 14, 18))
    small = render(attrs, 32)
    big = small.resize((256, 256), Image.Resampling.NEAREST)  # takes the downscaling path
    for image in (small, pil_to_tensor(small), big, pil_to_tensor(big)):
        result = judge_shape(image)
        assert (result.color, result.shape, result.background, result.single) == (
            attrs.color,
            attrs.shape,
            attrs.background,
            True,
        )


def test_judge_rejects_what_is_not_a_shape():
    ring = canvas()
    ImageDraw.Draw(ring).ellipse((12, 12, 52, 52), outline=COLORS["cyan"], width=6)
    cross = canvas("white")
    ImageDraw.Draw(cross).rectangle((10, 28, 54, 36), fill=COLORS["orange"])
    ImageDraw.Draw(cross).rectangle((28, 10, 36, 54), fill=COLORS["orange"])
    for image in (ring, cross):
        assert judge_shape(image).shape is None
    brown = canvas()
    ImageDraw.Draw(brown).rectangle((10, 10, 40, 40), fill=(120, 80, 40))  # no palette colour
    assert judge_shape(brown).color is None


def test_matches_every_caption_form():
    result = JudgeResult(color="red", shape="circle", background="white", single=True)
    for caption in ("a large red circle on a white background", "a red circle", "red circle on white"):
        assert matches(result, caption)
        assert matches(result, caption.upper())
    assert not matches(result, "a blue circle")
    assert not matches(result, "a red square")
    assert not matches(result, "red circle on black", check_background=True)
    assert matches(result, "red circle on white", check_background=True)
    assert not matches(JudgeResult("red", "circle", "white", single=False), "a red circle")
    assert parse_caption("a small pink triangle on a gray background") == ("pink", "triangle", "gray")
    with pytest.raises(ValueError, match="must name a colour"):
        parse_caption("a circle")
    with pytest.raises(ValueError):
        parse_caption("a red and blue circle")


def test_score_folder_keeps_each_images_verdict_in_file_order(tmp_path):
    """bench/ranking_depth.py reads the verdicts best-first from the file numbers: they must line up."""
    from dalle_dist.evaluation.score_outputs import score_folder

    (tmp_path / "caption.txt").write_text("a red circle\n")
    shapes = ["circle", "square", "circle", "triangle", "circle", "circle", "circle", "circle", "circle",
              "circle", "circle"]  # fmt: skip
    for i, shape in enumerate(shapes):  # 0..10: "10.png" sorts after "9.png" by number, not by name
        attributes = ShapeAttributes("large", "red", shape, "white", (6, 6, 26, 26))
        render(attributes, 32).save(tmp_path / f"{i}.png")
    row = score_folder(tmp_path)
    assert row["right"] == [shape == "circle" for shape in shapes]
    assert row["correct"] == sum(row["right"]) == 9
