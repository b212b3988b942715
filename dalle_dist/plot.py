"""Draw a run's curves: ``python -m dalle_dist.plot RUN_DIR [--out FILE]``.

Reads ``RUN_DIR/metrics.jsonl`` (what every train_vae.py / train_dalle.py run writes) and saves one PNG
(default ``RUN_DIR/curves.png``) with a panel per family of figures: losses (with the text and image parts
and the validation loss where present), throughput, learning rate, and the VAE's codebook usage,
perplexity, codes restarted and held-out PSNR.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .cli import Parser, output_file

PANELS = {
    "loss": ("loss", "text_loss", "image_loss", "val_loss"),
    "samples / s": ("samples_per_s",),
    "learning rate": ("lr",),
    # the tokenizer's figures, each on its own scale (a share, a count of codes, a count of restarts, dB)
    "codebook used": ("codebook_used",),
    "perplexity": ("codebook_perplexity",),
    "codes restarted": ("codes_restarted",),
    "held-out PSNR dB": ("val_psnr",),
    "MFU": ("mfu",),
}


def read_metrics(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """``name -> (steps, values)`` for every numeric figure in ``metrics.jsonl``."""
    file = run_dir / "metrics.jsonl"
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist: pass a train_vae.py / train_dalle.py run directory")
    series: dict[str, tuple[list[int], list[float]]] = {}
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ValueError(f"{file} line {number} is not JSON: the file is damaged") from None
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                steps, values = series.setdefault(key, ([], []))
                steps.append(int(record["step"]))
                values.append(float(value))
    return series


def panels(series: dict[str, tuple[list[int], list[float]]]) -> list[tuple[str, list[str]]]:
    """``(title, figures)`` of each panel the run's figures fill, in ``PANELS`` order."""
    chosen = [(title, [k for k in keys if k in series]) for title, keys in PANELS.items()]
    return [(title, keys) for title, keys in chosen if keys]


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Save the curves of ``run_dir`` to ``out`` (default ``run_dir/curves.png``) and return its path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    series = read_metrics(run_dir)
    drawn = panels(series)
    if not drawn:
        raise ValueError(f"{run_dir / 'metrics.jsonl'} holds no training figures yet: plot after a few steps")
    fig, axes = plt.subplots(len(drawn), 1, figsize=(8, 2.6 * len(drawn)), sharex=True, squeeze=False)
    for ax, (title, keys) in zip(axes[:, 0], drawn, strict=True):
        for key in keys:
            steps, values = series[key]
            ax.plot(steps, values, label=key, marker="." if len(steps) < 30 else None)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(loc="best", fontsize="small")
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(run_dir.resolve().name)
    fig.tight_layout()
    out = out or run_dir / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def build_parser() -> Parser:
    parser = Parser(prog="python -m dalle_dist.plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a train_vae.py / train_dalle.py run directory")
    parser.add_argument(
        "--out", type=output_file, default=None, help="PNG to write (default RUN_DIR/curves.png)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse(argv)
    try:
        path = plot_run(args.run_dir, args.out)
    except ImportError:
        print("error: plotting needs matplotlib: pip install matplotlib (make install-dev)", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"curves of {args.run_dir} in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
