"""This tree's dalle_dist against another revision's, on this machine, as ratios measured in one run.

    .venv/bin/python bench/compare_revisions.py --base REV [--head REV] [--rounds 5] [--only train ...]

For a change that must not slow anything down (a refactor): the same workloads, through the public API
both revisions share (``DALLE(...)``, ``dalle(text, image, return_loss=True)``, ``generate_images``,
``train_vae.py`` / ``train_dalle.py``), run in fresh child processes, one per revision and round, the two
revisions alternating (A B B A A B ...) so that machine noise hits both alike. The base revision is
checked out into a temporary git worktree (and so is ``--head``, when given instead of this working
tree). Each child times its workload after warm-up; a row reports the
median over all rounds of each side, ratio = this tree / base (< 1: this tree is faster), and the ratio
of the fastest repeats.

Workloads (dims as bench/compare_dalle_pytorch.py: dim 256, 8 heads x 32, text 64, 10000 text tokens,
VAE of 1024 codes, 3 layers; "mixed" = full, axial_row, axial_col, conv_like):
- train: one step (forward return_loss, backward, AdamW) at batch 4, depth 8, 128 px (321 positions),
  full and mixed layouts in fp32, mixed under bf16 autocast.
- generate: ``generate_images`` of 4 images, depth 4, 128 px, cached decoding (the VAE decode included),
  full and mixed layouts, and mixed with guidance (cond_scale 3).
- loop: the whole training loop: ``train_dalle.py --config configs/demo_dalle.yaml`` for 40 steps on a
  VAE trained for 10 steps, samples/s of steps 11-40 from metrics.jsonl (higher is better: the ratio
  shown is base / this tree, so that < 1 still means this tree is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2
BASE = {"dim": 256, "heads": 8, "dim_head": 32, "text_seq_len": 64, "num_text_tokens": 10000}
LAYOUTS = {"full": ("full",), "mixed": ("full", "axial_row", "axial_col", "conv_like")}
WORKLOADS = {
    "train": [
        {"kind": "train", "layout": "full", "bf16": False},
        {"kind": "train", "layout": "mixed", "bf16": False},
        {"kind": "train", "layout": "mixed", "bf16": True},
    ],
    "generate": [
        {"kind": "generate", "layout": "full", "cond_scale": 1.0},
        {"kind": "generate", "layout": "mixed", "cond_scale": 1.0},
        {"kind": "generate", "layout": "mixed", "cond_scale": 3.0},
    ],
    "loop": [{"kind": "loop"}],
}


# ------------------------------------------------------------------------------------------ the child
def _model(layout: str, depth: int):
    import torch

    from dalle_dist import DALLE, DiscreteVAE

    torch.manual_seed(0)
    vae = DiscreteVAE(image_size=128, num_tokens=1024, codebook_dim=256, hidden_dim=64, num_layers=3)
    return DALLE(vae=vae, depth=depth, attn_types=LAYOUTS[layout], **BASE)


def _train(spec: dict, repeats: int) -> list[float]:
    import contextlib

    import torch
    from timing import times

    model = _model(spec["layout"], depth=8)
    g = torch.Generator().manual_seed(1)
    text = torch.randint(1, 10000, (4, 64), generator=g)
    image = torch.randint(0, 1024, (4, model.image_seq_len), generator=g)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if spec["bf16"] else contextlib.nullcontext()
        with autocast:
            loss = model(text, image, return_loss=True)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return times(step, repeats, warmup=2)


def _generate(spec: dict, repeats: int) -> list[float]:
    import torch
    from timing import times

    model = _model(spec["layout"], depth=4)
    text = torch.randint(1, 10000, (4, 64), generator=torch.Generator().manual_seed(1))

    def run() -> None:
        torch.manual_seed(0)
        model.generate_images(text, filter_thres=0.9, cond_scale=spec["cond_scale"])

    return times(run, repeats, warmup=1)


def _loop(tree: Path) -> list[float]:
    """Samples/s of the real training loop (inverted into seconds per sample, so lower is better)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "PYTHONPATH": str(tree)}
    with tempfile.TemporaryDirectory() as work:
        vae, out = Path(work) / "vae", Path(work) / "dalle"
        common = ["--save_every_n_steps", "100000", "--sample_every", "100000", "--progress", "lines"]
        vae_cmd = [sys.executable, tree / "train_vae.py", "--config", tree / "configs/demo_vae.yaml",
                   "--max_steps", "10", "--output", vae, *common]  # fmt: skip
        subprocess.run(vae_cmd, check=True, capture_output=True, env=env, cwd=tree)
        dalle_cmd = [sys.executable, tree / "train_dalle.py", "--config", tree / "configs/demo_dalle.yaml",
                     "--vae_path", vae, "--max_steps", "40", "--log_every", "10", "--output", out,
                     *common]  # fmt: skip
        subprocess.run(dalle_cmd, check=True, capture_output=True, env=env, cwd=tree)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [1.0 / r["samples_per_s"] for r in records if "samples_per_s" in r and r["step"] > 10]


def child(spec: dict, tree: Path, repeats: int) -> list[float]:
    if spec["kind"] == "loop":
        return _loop(tree)
    import torch

    torch.set_num_threads(THREADS)
    import dalle_dist

    assert Path(dalle_dist.__file__).resolve().is_relative_to(tree.resolve()), dalle_dist.__file__
    return {"train": _train, "generate": _generate}[spec["kind"]](spec, repeats)


# ------------------------------------------------------------------------------------------ the parent
def run_child(tree: Path, spec: dict, repeats: int) -> list[float]:
    code = (
        f"import sys; sys.path.insert(0, {str(tree)!r}); sys.path.insert(0, {str(ROOT / 'bench')!r}); "
        "import json, compare_revisions as c; from pathlib import Path; "
        f"spec = json.loads({json.dumps(json.dumps(spec))}); "
        f"print(json.dumps(c.child(spec, Path({str(tree)!r}), {repeats})))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tree)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({tree}, {spec}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def label(spec: dict) -> str:
    if spec["kind"] == "train":
        return f"train step {spec['layout']}{' bf16' if spec['bf16'] else ''}"
    if spec["kind"] == "generate":
        guided = f", cond_scale {spec['cond_scale']:g}" if spec["cond_scale"] != 1 else ""
        return f"generate 4 images {spec['layout']}{guided}"
    return "training loop (s / sample)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="the revision to compare against (e.g. a commit)")
    parser.add_argument("--head", default=None, help="compare this revision instead of the working tree")
    parser.add_argument("--rounds", type=int, default=5, help="child processes per side and workload")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per child (after warm-up)")
    parser.add_argument("--only", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base, this = Path(tmp) / "base", ROOT
        trees = [(base, args.base)] + ([(Path(tmp) / "head", args.head)] if args.head else [])
        for tree, rev in trees:
            subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", tree, rev], check=True,
                           capture_output=True)  # fmt: skip
        if args.head:
            this = Path(tmp) / "head"
        try:
            commit, here = (
                subprocess.run(
                    ["git", "-C", tree, "rev-parse", "--short", "HEAD"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()
                for tree in (base, this)
            )
            what = f"{here}" if args.head else f"{here} + working changes"
            print(f"this tree ({what}) vs base {commit}; {THREADS} threads, {args.rounds} rounds x "
                  f"{args.repeats} repeats, sides alternating")  # fmt: skip
            print(f"{'workload':<40}{'base s':>10}{'this s':>10}{'ratio':>8}{'ratio(min)':>12}")
            for section in args.only:
                for spec in WORKLOADS[section]:
                    times: dict[str, list[float]] = {"base": [], "this": []}
                    for r in range(args.rounds):
                        order = [("base", base), ("this", this)]
                        for name, tree in order if r % 2 == 0 else order[::-1]:
                            times[name] += run_child(tree, spec, args.repeats)
                    b, t = statistics.median(times["base"]), statistics.median(times["this"])
                    print(f"{label(spec):<40}{b:>10.4f}{t:>10.4f}{t / b:>8.3f}"
                          f"{min(times['this']) / min(times['base']):>12.3f}", flush=True)  # fmt: skip
        finally:
            for tree, _ in trees:
                subprocess.run(
                    ["git", "-C", ROOT, "worktree", "remove", "--force", tree], capture_output=True
                )


if __name__ == "__main__":
    main()
