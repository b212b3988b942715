"""``--shapes two``: pictures of two captioned shapes, their judge and their scoring."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from dalle_dist.data import DataConfig, build_dataset
from dalle_dist.data.errors import DataError
from dalle_dist.data.synthetic import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    TWO_SIZES,
    ShapeAttributes,
    ShapePair,
    ShapesDataset,
    render,
)
from dalle_dist.evaluation import judge_shape, judge_shapes, matches, matches_all
from dalle_dist.evaluation.score_outputs import main as score_main
from dalle_dist.evaluation.shapes_judge import parse_caption, parse_pairs

ONE = (
    rf"(?P<size{{n}}>{'|'.join(TWO_SIZES)}) (?P<color{{n}}>{'|'.join(COLORS)}) "
    rf"(?P<shape{{n}}>{'|'.join(SHAPES)})"
)
FULL = re.compile(
    rf"a {ONE.format(n=1)} and a {ONE.format(n=2)} on a (?P<background>{'|'.join(BACKGROUNDS)}) background"
)


def boxes_apart(a: tuple[int, ...], b: tuple[int, ...], gap: int) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


@pytest.mark.parametrize("image_size", [8, 16, 32, 64])
def test_two_shape_items_follow_their_captions(image_size):
    ds = ShapesDataset(image_size, length=400, seed=2, holdout="red triangle", shapes=2)
    gap = max(2, round(0.1 * image_size))
    seen = set()
    for i in range(len(ds)):
        scene = ds.attributes(i)
        assert isinstance(scene, ShapePair)
        a, b = scene.shapes
        full, short, medium = scene.captions()
        match = FULL.fullmatch(full)
        assert match, full
        assert match.groupdict() == {
            "size1": a.size, "color1": a.color, "shape1": a.shape,
            "size2": b.size, "color2": b.color, "shape2": b.shape, "background": scene.background,
        }  # fmt: skip
        assert short == f"a {a.color} {a.shape} and a {b.color} {b.shape}"
        assert medium == f"{a.color} {a.shape} and {b.color} {b.shape} on {scene.background}"
        assert (a.color, a.shape) != (b.color, b.shape)  # two different pairs
        assert "red triangle" not in full  # the holdout is left out of both places
        assert boxes_apart(a.bbox, b.bbox, gap), (a.bbox, b.bbox)
        for shape in (a, b):
            x0, y0, x1, y1 = shape.bbox
            assert 0 <= x0 < x1 <= image_size and 0 <= y0 < y1 <= image_size and x1 - x0 == y1 - y0
            seen.add((shape.size, shape.color, shape.shape))
        # each shape's colour at its box centre (a 2-pixel triangle's centre is partly covered)
        image = ds[i][0].permute(1, 2, 0).numpy() * 255
        for shape in (a, b) if image_size >= 32 else ():
            x0, y0, x1, y1 = shape.bbox
            assert np.abs(image[(y0 + y1) // 2, (x0 + x1) // 2] - COLORS[shape.color]).max() <= 1.0
        assert ds[i][1] == scene.captions()
    assert {s[0] for s in seen} == set(TWO_SIZES) and {s[1] for s in seen} == set(COLORS)
    assert {s[2] for s in seen} == set(SHAPES)


def test_two_shapes_is_its_own_dataset_and_is_described():
    one, two = ShapesDataset(32, length=50, seed=1), ShapesDataset(32, length=50, seed=1, shapes=2)
    assert one.describe()["shapes"] == 1 and two.describe()["shapes"] == 2
    assert sum(torch.equal(one[i][0], two[i][0]) for i in range(50)) == 0
    again = ShapesDataset(32, length=50, seed=1, shapes=2)
    assert all(torch.equal(two[i][0], again[i][0]) for i in range(50))  # deterministic
    built = build_dataset(DataConfig(image_size=32, dataset_size=50, seed=1, shapes=2))
    assert torch.equal(built[7][0], two[7][0]) and built[7][1] == two[7][1]
    with pytest.raises(DataError, match="--shapes"):
        build_dataset(DataConfig(image_size=32, shapes=3))
    nearly_all = ",".join(f"{c} {s}" for c in COLORS for s in SHAPES if (c, s) != ("red", "circle"))
    with pytest.raises(ValueError, match="two shapes need two"):
        ShapesDataset(32, holdout=nearly_all, shapes=2)


def test_render_draws_a_pair():
    a = ShapeAttributes("small", "red", "square", "black", (1, 1, 6, 6))
    b = ShapeAttributes("large", "cyan", "square", "black", (9, 9, 15, 15))
    image = np.asarray(render(ShapePair(a, b), 16), dtype=float)
    assert (image[1:6, 1:6] == COLORS["red"]).all() and (image[9:15, 9:15] == COLORS["cyan"]).all()
    assert (image[7, :] == BACKGROUNDS["black"]).all()


@pytest.mark.parametrize("image_size", [32, 64])
def test_judge_reads_both_shapes(image_size):
    ds = ShapesDataset(image_size, length=300, seed=5, shapes=2)
    right = sum(all(matches_all(judge_shapes(ds[i][0]), c) for c in ds[i][1]) for i in range(len(ds)))
    assert right / len(ds) >= 0.98


def test_judge_reads_both_shapes_through_noise_and_blur():
    rng = np.random.default_rng(0)
    ds = ShapesDataset(32, length=300, seed=7, shapes=2)
    right = 0
    for i in range(len(ds)):
        picture = render(ds.attributes(i), 32).filter(ImageFilter.GaussianBlur(0.6))
        noisy = np.clip(np.asarray(picture, dtype=np.float32) / 255 + rng.normal(0, 0.05, (32, 32, 3)), 0, 1)
        found = judge_shapes(torch.from_numpy(noisy.astype(np.float32)).permute(2, 0, 1))
        right += matches_all(found, ds[i][1][0])
    assert right / len(ds) >= 0.9


def test_two_shape_matching_is_exact():
    a = ShapeAttributes("large", "green", "circle", "gray", (2, 2, 12, 12))
    b = ShapeAttributes("large", "blue", "triangle", "gray", (18, 18, 30, 30))
    found = judge_shapes(render(ShapePair(a, b), 32))
    assert [(r.color, r.shape) for r in found] == [("blue", "triangle"), ("green", "circle")]  # largest first
    assert matches_all(found, "a green circle and a blue triangle")
    assert matches_all(found, "blue triangle and green circle on gray")  # either order
    assert not matches_all(found, "a green square and a blue triangle")
    assert matches_all(found, "a green square and a blue triangle", colours_only=True)
    assert not matches_all(found[:1], "a green circle and a blue triangle")  # one is missing
    assert not matches_all(found, "a green circle")  # one too many
    # the one-shape judge sees the larger shape and says it is not alone
    result = judge_shape(render(ShapePair(a, b), 32))
    assert not result.single and not matches(result, "a blue triangle")
    assert judge_shapes(Image.new("RGB", (32, 32), BACKGROUNDS["white"])) == []


def test_caption_parsing_takes_one_or_two_pairs():
    assert parse_pairs("a small red circle and a large blue square on a white background") == (
        [("red", "circle"), ("blue", "square")],
        "white",
    )
    assert parse_pairs("a red circle") == ([("red", "circle")], None)
    assert parse_caption("pink triangle on gray") == ("pink", "triangle", "gray")
    for bad in ("a circle and a red square", "a red blue circle", "a red circle, "
                "a blue square and a green circle"):  # fmt: skip
        with pytest.raises(ValueError, match="must name a colour"):
            parse_pairs(bad)
    with pytest.raises(ValueError, match="names 2 shapes; one is expected"):
        parse_caption("a red circle and a blue square")


def test_score_outputs_scores_two_shape_prompts(tmp_path, capsys):
    ds = ShapesDataset(32, length=40, seed=3, shapes=2)
    picked = {}
    for i in range(len(ds)):
        picked.setdefault(ds[i][1][1], []).append(i)
    prompts = sorted(picked, key=lambda p: -len(picked[p]))[:2]
    for n, prompt in enumerate(prompts):
        folder = tmp_path / "out" / f"p{n}"
        folder.mkdir(parents=True)
        (folder / "caption.txt").write_text(prompt + "\n")
        for k, i in enumerate(picked[prompt]):
            render(ds.attributes(i), 32).save(folder / f"{k}.png")
        Image.new("RGB", (32, 32), BACKGROUNDS["black"]).save(folder / f"{len(picked[prompt])}.png")
    holdout = " ".join(parse_pairs(prompts[1])[0][0])
    assert score_main([str(tmp_path / "out"), "--holdout", holdout, "--json", str(tmp_path / "s.json")]) == 0
    scores = json.loads((tmp_path / "s.json").read_text())
    rows = {r["prompt"]: r for r in scores["prompts"]}
    for prompt in prompts:
        n = len(picked[prompt])
        assert rows[prompt]["images"] == n + 1 and rows[prompt]["correct"] == n
        assert rows[prompt]["seen"][-1] == "nothing" and rows[prompt]["right"] == [True] * n + [False]
    assert scores["held_out_pairs"]["images"] == len(picked[prompts[1]]) + 1  # either pair held out counts
    assert "(held out)" in capsys.readouterr().out


def test_shapes_flag_reaches_every_trainer_and_refuses_folders(tmp_path):
    (tmp_path / "a.png").touch()
    for script in ("train_vae.py", "train_dalle.py", "train_clip.py", "train_prior.py", "train_decoder.py"):
        done = subprocess.run(
            [sys.executable, script, "--image_folder" if script == "train_vae.py" else "--image_text_folder",
             str(tmp_path), "--shapes", "two",
             "--output", str(tmp_path / "run")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2, (script, done.stderr)
        assert "--shapes applies to the built-in dataset only" in done.stderr, (script, done.stderr)


@pytest.mark.parametrize("shapes", ["one", "two"])
def test_demo_prompts_name_every_colour_and_shape_and_the_holdout_once(shapes):
    show = 'source scripts/demo_prompts.sh && printf "%s\\n%s\\n%s" "$HOLDOUT" "$PROMPTS" "${DATA[*]}"'
    done = subprocess.run(
        ["bash", "-c", show],
        capture_output=True, text=True, env={"SHAPES": shapes, "PATH": "/usr/bin:/bin"}, check=True,
    )  # fmt: skip
    holdout, prompts, data = done.stdout.split("\n")
    assert data == f"--shapes {shapes}"
    pairs = [parse_pairs(p)[0] for p in prompts.split("|")]
    assert {len(p) for p in pairs} == {1 if shapes == "one" else 2}
    named = [pair for prompt in pairs for pair in prompt]
    assert {c for c, _ in named} == set(COLORS) and {s for _, s in named} == set(SHAPES)
    assert sum(holdout == f"{c} {s}" for c, s in named) == 1


def test_demo_refuses_an_unknown_shapes_setting():
    done = subprocess.run(
        ["bash", "scripts/demo.sh", sys.executable, "/nonexistent/run"],
        capture_output=True, text=True, env={"SHAPES": "three", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip() == "error: SHAPES must be one or two, got 'three'"
