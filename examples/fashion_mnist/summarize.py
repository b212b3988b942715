#!/usr/bin/env python
"""Print the figures of a run.sh run as Markdown (and write RUN/summary.json).

    python examples/fashion_mnist/summarize.py runs/fashion_mnist

Reads RUN/times.tsv, machine.txt, command.txt, classifier/classifier.json, judge_{ranked,plain}.json,
eval_{ranked,plain,reference,reconstructed}.json and the trainers' metrics.jsonl; a missing file leaves its
lines out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SETS = {
    "ranked": "generated, CLIP-ranked",
    "plain": "generated, not ranked",
    "reference": "real training images (reference)",
    "reconstructed": "reference through the VAE's tokens (the tokenizer's floor)",
}


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _last_metrics(path: Path) -> dict:
    """The last logged line of a trainer's metrics.jsonl that has a loss (training, not evaluation)."""
    last: dict = {}
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if "loss" in record and "samples_per_s" in record:
                last = record
    except (OSError, ValueError):
        pass
    return last


def _mean_rate(path: Path) -> float | None:
    rates = []
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if "samples_per_s" in record:
                rates.append(record["samples_per_s"])
    except (OSError, ValueError):
        return None
    return sum(rates) / len(rates) if rates else None


def _minutes(seconds: int) -> str:
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def summarize(run: Path) -> tuple[list[str], dict]:
    lines, summary = [], {"run": str(run)}
    machine = (run / "machine.txt").read_text().strip().splitlines() if (run / "machine.txt").exists() else []
    command = (run / "command.txt").read_text().strip() if (run / "command.txt").exists() else ""
    summary["machine"], summary["command"] = machine, command
    lines.append(f"Run: `{run}`; " + "; ".join(machine) + " (load = 1, 5, 15 min averages)")
    if command:
        lines.append("Command and settings: `" + "`, `".join(command.splitlines()) + "`")

    times = {}
    if (run / "times.tsv").exists():
        rows = [r.split("\t") for r in (run / "times.tsv").read_text().strip().splitlines()[1:]]
        times = {name: (int(sec), chain) for name, sec, chain in rows}
    summary["seconds"] = {k: v[0] for k, v in times.items()}
    if times:
        lines += ["", "| stage | wall time | runs |", "| --- | --- | --- |"]
        for name, (sec, chain) in times.items():
            where = {"main": "alone / main chain", "side": "alongside the main chain", "-": ""}[chain]
            lines.append(f"| {name} | {_minutes(sec)} | {where} |")

    rates = {}
    for name in ("vae", "dalle", "clip", "prior", "decoder"):
        last, mean = _last_metrics(run / name / "metrics.jsonl"), _mean_rate(run / name / "metrics.jsonl")
        if last:
            rates[name] = {"step": last.get("step"), "loss": last.get("loss"), "mean_samples_per_s": mean}
    summary["training"] = rates
    if rates:
        lines.append("")
        lines.append(
            "Training: "
            + "; ".join(
                f"{k} {v['step']} steps, final loss {v['loss']:.4f}, {v['mean_samples_per_s']:.0f} samples/s"
                for k, v in rates.items()
            )
        )

    cls = _json(run / "classifier" / "classifier.json")
    if cls:
        summary["classifier"] = cls
        per = ", ".join(f"{k} {v:.1%}" for k, v in cls["per_class_test_accuracy"].items())
        lines += [
            "",
            f"Classifier (judge): **{cls['test_accuracy']:.2%}** test accuracy on {cls['test_images']} real "
            f"test images ({cls['train_images']} training images, {cls['epochs']} epochs); per class: {per}",
        ]

    judged = {s: _json(run / f"judge_{s}.json") for s in ("ranked", "plain")}
    judged = {s: j for s, j in judged.items() if j}
    summary["judge"] = judged
    if judged:
        names = list(judged)
        lines += [
            "",
            "Class accuracy of generated images (the classifier's verdict vs the class in the prompt; "
            "chance 10 %):",
            "",
            "| prompt | " + " | ".join(SETS[s] for s in names) + " |",
            "| --- | " + " | ".join("---" for _ in names) + " |",
        ]
        for prompt in judged[names[0]]["per_prompt"]:
            cells = []
            for s in names:
                r = judged[s]["per_prompt"].get(prompt)
                cells.append(f"{r['accuracy']:.0%} of {r['images']}" if r else "-")
            lines.append(f"| {prompt} | " + " | ".join(cells) + " |")
        overall = [
            f"**{judged[s]['overall']['accuracy']:.1%}** of {judged[s]['overall']['images']}" for s in names
        ]
        lines.append("| overall | " + " | ".join(overall) + " |")

    evals = {s: _json(run / f"eval_{s}.json") for s in SETS}
    evals = {s: e for s, e in evals.items() if e}
    summary["evaluate"] = evals
    if evals:
        lines += [
            "",
            "evaluate.py against the real test split (CLIP-score: mean cosine of our CLIP's latents, "
            "chance = the same images vs the other nine prompts; Fréchet distance in the CLIP image "
            "latents (dim 128) and in the classifier's penultimate features (dim 128)):",
            "",
            "| images | count | CLIP-score | chance | FD, CLIP latents | FD, classifier features "
            "| real images |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for s, e in evals.items():
            score = e["clip_score"]
            fds = [f"{fd['value']:.4f}" for fd in e["frechet"]]
            fds += ["-"] * (2 - len(fds))
            lines.append(
                f"| {SETS[s]} | {e['generated']['images']} | {score['value']:.4f} | "
                f"{score['mismatched_prompts']:.4f} | {fds[0]} | {fds[1]} | {e['real']['images']} |"
            )
        real = next(iter(evals.values()))["real_clip_score"]
        if real:
            lines.append(
                f"\nReal test images vs their own captions: CLIP-score {real['value']:.4f} "
                f"(vs the other captions: {real['mismatched_prompts']:.4f}; {real['images']} images)"
            )
    return lines, summary


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: summarize.py RUN_DIR (the folder run.sh wrote)", file=sys.stderr)
        return 2
    run = Path(args[0])
    lines, summary = summarize(run)
    print("\n".join(lines))
    (run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
