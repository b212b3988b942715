"""Peak training memory of DALLE at depth 16 vs depth 4, reversible and not.

Two measures, each a ratio printed against the depth-4 baseline of the same run:
- activation bytes autograd keeps for backward (exact, from saved-tensor hooks);
- peak resident memory added by one forward + backward, measured in a fresh subprocess per setting.

    .venv/bin/python bench/reversible_memory.py [--dim 256] [--image_size 128] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch

from dalle_dist import DALLE, DiscreteVAE


def build(depth: int, reversible: bool, args: argparse.Namespace) -> DALLE:
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
        reversible=reversible,
    )


def measure(depth: int, reversible: bool, args: argparse.Namespace) -> dict:
    """Run one forward + backward and report saved-activation bytes and added peak RSS (KiB)."""
    dalle = build(depth, reversible, args)
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
    return {"saved_bytes": sum(storages.values()), "peak_added_kib": peak - base}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--text_seq_len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--child", nargs=2, metavar=("DEPTH", "REVERSIBLE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(int(args.child[0]), args.child[1] == "1", args)))
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
    for reversible in (False, True):
        for depth in (4, 16):
            out = subprocess.run(
                [sys.executable, __file__, *flags, "--child", str(depth), str(int(reversible))],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[reversible, depth] = json.loads(out.strip().splitlines()[-1])
    print(
        f"dim {args.dim}, {args.image_size}px ({(args.image_size // 8) ** 2} image tokens), "
        f"text {args.text_seq_len}, batch {args.batch}"
    )
    print(f"{'layers':<14}{'depth':>6}{'saved MiB':>12}{'peak+ MiB':>12}{'saved x d4':>12}{'peak x d4':>12}")
    for reversible in (False, True):
        base = results[reversible, 4]
        for depth in (4, 16):
            r = results[reversible, depth]
            print(
                f"{'reversible' if reversible else 'standard':<14}{depth:>6}"
                f"{r['saved_bytes'] / 2**20:>12.1f}{r['peak_added_kib'] / 1024:>12.1f}"
                f"{r['saved_bytes'] / base['saved_bytes']:>12.2f}"
                f"{r['peak_added_kib'] / base['peak_added_kib']:>12.2f}"
            )


if __name__ == "__main__":
    main()
