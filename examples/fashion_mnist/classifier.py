#!/usr/bin/env python
"""A small Fashion-MNIST CNN: the judge of generated images, and a feature space for the Fréchet distance.

    # train on the real training split, report its own test accuracy, export TorchScript
    python examples/fashion_mnist/classifier.py train --out runs/fashion_mnist/classifier [--epochs 3]
    # classify generate.py's images (OUTPUTS/<prompt_with_underscores>/<n>.png) against their prompts' class
    python examples/fashion_mnist/classifier.py judge --model runs/fashion_mnist/classifier/classifier.pt \
        --outputs runs/fashion_mnist/outputs [--json judge.json]

``train`` writes into ``--out``:

* ``classifier.pt``: TorchScript, ``forward([B, 3, 32, 32] in [0, 1]) -> logits [B, 10]`` (label order of
  prepare.CLASSES), plus an exported ``features`` method;
* ``features.pt``: TorchScript, ``forward([B, 3, 32, 32] in [0, 1]) -> [B, 128]``, the penultimate layer
  (after its ReLU): ``evaluate.py --feature_model features.pt --feature_image_size 32``;
* ``classifier.json``: its test accuracy (overall and per class), the settings and the time taken.

The network sees the mean of the three channels (the data is grey; a generated image's slight tint does not
count). Images are the training split as prepare.py writes it (28 px padded to 32, never resized).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# the sibling module, importable however this file is run
sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare import (
    CLASSES,
    DEFAULT_DATA_DIR,
    BadIdx,
    MissingData,
    label_of_caption,
    load_split,
    to_rgb32,
)

IMAGE_SIZE = 32
FEATURE_DIM = 128
# mean and standard deviation of Fashion-MNIST's training pixels (in [0, 1]); the padding changes them
# little, and the exact values only condition the optimisation
MEAN, STD = 0.2860, 0.3530


class NothingToJudge(ValueError):
    """No generated image belongs to a Fashion-MNIST prompt."""


class FashionCNN(nn.Module):
    """Three conv blocks (32 -> 16 -> 8 -> 4 px) and a 128-unit hidden layer: ~7.5 M multiply-adds per
    image; 92 % test accuracy after 3 epochs (measured)."""

    def __init__(self, num_classes: int = len(CLASSES), feature_dim: int = FEATURE_DIM) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.body = nn.Sequential(block(1, 32), block(32, 64), block(64, 64))
        self.hidden = nn.Linear(64 * 4 * 4, feature_dim)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)
        self.mean, self.std = MEAN, STD  # attributes: TorchScript does not read module globals

    @torch.jit.export
    def features(self, images: Tensor) -> Tensor:
        """``[B, 3 (or 1), 32, 32]`` in [0, 1] -> penultimate features ``[B, 128]``."""
        grey = images.mean(dim=1, keepdim=True)
        x = self.body((grey - self.mean) / self.std)
        return F.relu(self.hidden(x.flatten(1)))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(images)))


class FeatureExtractor(nn.Module):
    """``forward`` = ``net.features``: what evaluate.py's ``--feature_model`` calls."""

    def __init__(self, net: FashionCNN) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        return self.net.features(images)


def as_input(images: np.ndarray) -> Tensor:
    """uint8 ``[N, 32, 32, 3]`` (prepare.to_rgb32's) -> float ``[N, 3, 32, 32]`` in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """Predicted labels ``[N]`` of float images ``[N, 3, 32, 32]`` in [0, 1]."""
    model.eval()
    out = [model(images[i : i + batch_size]).argmax(dim=1) for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def per_class_accuracy(predicted: Tensor, labels: Tensor) -> dict[str, float]:
    return {
        CLASSES[k]: float((predicted[labels == k] == k).float().mean())
        for k in range(len(CLASSES))
        if (labels == k).any()
    }


def train_model(
    images: np.ndarray,
    labels: np.ndarray,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
) -> FashionCNN:
    """Train on uint8 ``[N, 28, 28]`` images (padded to 32 here) with Adam and a cosine schedule."""
    torch.manual_seed(seed)
    model = FashionCNN()
    # grey uint8 [N, 1, 32, 32]: a float RGB copy of 60k images would take 0.7 GB
    grey = torch.from_numpy(np.ascontiguousarray(to_rgb32(images)[..., 0]))[:, None]
    targets = torch.from_numpy(labels)
    steps = epochs * ((len(grey) + batch_size - 1) // batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(grey), generator=generator)
        start, total, hits = time.perf_counter(), 0.0, 0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            x = grey[idx].float().div(255)
            logits = model(x)
            loss = F.cross_entropy(logits, targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
            hits += int((logits.argmax(1) == targets[idx]).sum())
        print(
            f"epoch {epoch + 1}/{epochs}: loss {total / len(order):.4f}, "
            f"train accuracy {hits / len(order):.4f} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    return model.eval()


def export(model: FashionCNN, out: Path) -> tuple[Path, Path]:
    """``out/classifier.pt`` (logits) and ``out/features.pt`` (penultimate features), TorchScript."""
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with warnings.catch_warnings():
        # torch >= 2.9 marks TorchScript deprecated; it is the format evaluate.py's --feature_model reads
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        classifier, features = out / "classifier.pt", out / "features.pt"
        torch.jit.script(model).save(str(classifier))
        torch.jit.script(FeatureExtractor(model)).save(str(features))
    return classifier, features


def load_scripted(path: Path) -> torch.jit.ScriptModule:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: train the classifier first (classifier.py train)")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def read_image(path: Path) -> Tensor:
    """An image file as ``[3, 32, 32]`` in [0, 1] (other sizes resized, bicubic)."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (IMAGE_SIZE, IMAGE_SIZE):
            img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
        array = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def prompt_folders(outputs: Path) -> list[tuple[Path, str]]:
    """generate.py's prompt folders under ``outputs`` (or ``outputs`` itself) with their prompt: the text
    of ``caption.txt``, or the folder name with ``_`` read as spaces."""
    if not outputs.is_dir():
        raise FileNotFoundError(f"{outputs} is not a folder: pass generate.py's --outputs_dir")
    folders = (
        [outputs] if any(outputs.glob("[0-9]*.png")) else sorted(p for p in outputs.iterdir() if p.is_dir())
    )
    found = []
    for folder in folders:
        caption_file = folder / "caption.txt"
        if caption_file.is_file():
            prompt = caption_file.read_text(encoding="utf-8").strip()
        else:
            prompt = folder.name.replace("_", " ")
        found.append((folder, prompt))
    return found


def numbered_images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.glob("*.png") if p.stem.isdigit()), key=lambda p: int(p.stem))


def judge(model: nn.Module, outputs: Path) -> dict:
    """Classify every numbered image of generate.py's ``outputs`` and compare with the class its prompt
    names. Returns ``{"overall": {...}, "per_prompt": {prompt: {...}}, "skipped_prompts": [...]}``, each
    entry with ``class``, ``images``, ``correct``, ``accuracy`` and ``predicted`` (class -> count)."""
    per_prompt, skipped = {}, []
    total = correct = 0
    for folder, prompt in prompt_folders(outputs):
        label = label_of_caption(prompt)
        files = numbered_images(folder)
        if label is None or not files:
            skipped.append(prompt)
            continue
        predicted = predict(model, torch.stack([read_image(p) for p in files]))
        hits = int((predicted == label).sum())
        counts = Counter(CLASSES[int(k)] for k in predicted)
        per_prompt[prompt] = {
            "class": CLASSES[label],
            "images": len(files),
            "correct": hits,
            "accuracy": hits / len(files),
            "predicted": dict(counts.most_common()),
        }
        total, correct = total + len(files), correct + hits
    if not per_prompt:
        raise NothingToJudge(
            f"{outputs} holds no images for a Fashion-MNIST prompt (prompts found: {skipped or 'none'}); "
            "the prompts must be prepare.py's captions, e.g. 'a photo of a t-shirt'"
        )
    overall = {"images": total, "correct": correct, "accuracy": correct / total, "chance": 1 / len(CLASSES)}
    return {"overall": overall, "per_prompt": per_prompt, "skipped_prompts": skipped}


def judge_lines(result: dict) -> list[str]:
    lines = []
    for prompt, r in result["per_prompt"].items():
        confused = ", ".join(f"{k} {v}" for k, v in r["predicted"].items() if k != r["class"])
        lines.append(
            f"  {prompt!r:34} ({r['class']}): {r['accuracy']:6.1%} of {r['images']}"
            + (f"  [others: {confused}]" if confused else "")
        )
    o = result["overall"]
    lines.append(
        f"class accuracy of generated images: {o['accuracy']:.1%} ({o['correct']}/{o['images']}; "
        f"chance {o['chance']:.0%})"
    )
    if result["skipped_prompts"]:
        lines.append(f"  not judged (no class named, or no images): {result['skipped_prompts']}")
    return lines


def cmd_train(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    train_images, train_labels = load_split(args.data_dir, "train", args.train_limit)
    test_images, test_labels = load_split(args.data_dir, "test", args.test_limit)
    print(f"training on {len(train_images)} real training images, {args.epochs} epochs", flush=True)
    model = train_model(train_images, train_labels, args.epochs, args.batch_size, args.lr, args.seed)
    trained = time.perf_counter() - start
    classifier_path, features_path = export(model, args.out)
    # the test accuracy is measured with the exported TorchScript file: the judge's own numbers
    scripted = load_scripted(classifier_path)
    labels = torch.from_numpy(test_labels)
    predicted = predict(scripted, as_input(to_rgb32(test_images)))
    accuracy = float((predicted == labels).float().mean())
    per_class = per_class_accuracy(predicted, labels)
    report = {
        "test_accuracy": accuracy,
        "test_images": len(test_labels),
        "per_class_test_accuracy": per_class,
        "train_images": len(train_labels),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "seconds": time.perf_counter() - start,
        "train_seconds": trained,
        "classifier": str(classifier_path),
        "features": str(features_path),
        "feature_dim": FEATURE_DIM,
    }
    (args.out / "classifier.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(", ".join(f"{k} {v:.1%}" for k, v in per_class.items()))
    print(
        f"classifier test accuracy: {accuracy:.2%} on {len(test_labels)} real test images "
        f"({report['seconds']:.0f} s); wrote {classifier_path}, {features_path}"
    )


def cmd_judge(args: argparse.Namespace) -> None:
    result = judge(load_scripted(args.model), args.outputs)
    print("\n".join(judge_lines(result)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"judgement written to {args.json}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="examples/fashion_mnist/classifier.py", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train on the real training split, test, export TorchScript")
    train.add_argument(
        "--data_dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="the idx files' folder (env FASHION_MNIST_DIR)",
    )
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--batch_size", type=int, default=128)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--train_limit", type=int, default=None, help="first N training images only")
    train.add_argument("--test_limit", type=int, default=None, help="first N test images only")
    train.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    judge_parser = sub.add_parser(
        "judge", help="class accuracy of generate.py's images against their prompts"
    )
    judge_parser.add_argument("--model", type=Path, required=True, help="classifier.pt from `train`")
    judge_parser.add_argument("--outputs", type=Path, required=True, help="generate.py's --outputs_dir")
    judge_parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cmd_train(args) if args.command == "train" else cmd_judge(args)
    except (MissingData, BadIdx, FileNotFoundError, NothingToJudge) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
