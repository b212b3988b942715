"""Peak training memory of DALLE at depth 16 vs depth 4: standard, activation-checkpointed, reversible.

Two measures, each a ratio printed against the depth-4 baseline of the same run:
- activation bytes autograd keeps for backward (exact, from saved-tensor hooks);
- peak resident memory added by one forward + backward, measured in a fresh subprocess per setting
  (with glibc's mmap threshold lowered so that freed tensors leave the resident set), in total and
  without the parameter gradients, which any model of that depth needs.

    .venv/bin/python bench/reversible_memory.py [--dim 256] [--image_size 128] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import torch

from dalle_dist import DALLE, DiscreteVAE

MODES = ("standard", "checkpointed", "reversible")


def build(depth: int, mode: str, args: argparse.Namespace) -> DALLE:
    torch.manual_seed(0)
    vae = DiscreteVAE(
        image_size=args.image_size, num_layers=3, num_tokens=512, codebook_dim=64, hidden_dim=16
    )
    return DALLE(
        dim=args.dim,
        vae=vae,
        num_text_tokens=1000,
        text_seq_len=args.text_seq_len,
        depth=depth,
        heads=8,
        dim_head=args.dim // 8,
        reversible=mode == "reversible",
        activation_checkpointing=mode == "checkpointed",
    )


def measure(depth: int, mode: str, args: argparse.Namespace) -> dict:
    """Run one forward + backward and report saved-activation bytes and added peak RSS (KiB)."""
    dalle = build(depth, mode, args)
    text = torch.randint(1, 1000, (args.batch, args.text_seq_len))
    image = torch.randint(0, 512, (args.batch, dalle.image_seq_len))
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = dalle(text, image, return_loss=True)
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    grads = [p.grad for p in dalle.parameters() if p.grad is not None]
    grad_kib = sum(g.numel() * g.element_size() for g in grads) // 1024
    return {"saved_bytes": sum(storages.values()), "peak_added_kib": peak - base, "grad_kib": grad_kib}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--text_seq_len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--child", nargs=2, metavar=("DEPTH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(int(args.child[0]), args.child[1], args)))
        return

    flags = [
        "--dim",
        str(args.dim),
        "--image_size",
        str(args.image_size),
        "--text_seq_len",
        str(args.text_seq_len),
        "--batch",
        str(args.batch),
    ]
    results = {}
    for mode in MODES:
        for depth in (4, 16):
            out = subprocess.run(
                [sys.executable, __file__, *flags, "--child", str(depth), mode],
                check=True,
                capture_output=True,
                text=True,
                env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
            ).stdout
            results[mode, depth] = json.loads(out.strip().splitlines()[-1])
    print(
        f"dim {args.dim}, {args.image_size}px ({(args.image_size // 8) ** 2} image tokens), "
        f"text {args.text_seq_len}, batch {args.batch}"
    )
    header = ("layers", "depth", "saved MiB", "peak+ MiB", "grads MiB")
    header += ("saved x d4", "peak x d4", "peak-grads x d4")
    print(f"{header[0]:<12}" + "".join(f"{h:>{len(h) + 3}}" for h in header[1:]))
    for mode in MODES:
        base = results[mode, 4]
        for depth in (4, 16):
            r = results[mode, depth]
            cells = (
                f"{depth}",
                f"{r['saved_bytes'] / 2**20:.1f}",
                f"{r['peak_added_kib'] / 1024:.1f}",
                f"{r['grad_kib'] / 1024:.1f}",
                f"{r['saved_bytes'] / base['saved_bytes']:.2f}",
                f"{r['peak_added_kib'] / base['peak_added_kib']:.2f}",
                f"{(r['peak_added_kib'] - r['grad_kib']) / (base['peak_added_kib'] - base['grad_kib']):.2f}",
            )
            name = mode
            widths = [len(h) + 3 for h in header[1:]]
            print(f"{name:<12}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))


if __name__ == "__main__":
    main()
