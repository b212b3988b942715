"""minDALL-E 1.3B at full size with random weights: its published folder layout converted, the parameter
count checked against the published 1.3B, and decoding (image tokens/s with the key/value cache) in fp32
and bf16, printed with bf16's ratio to fp32 measured in this run.

The folder is what kakaobrain/minDALL-E's ``1.3B.tar.gz`` holds, at its sizes (docs/pretrained_layouts.md):
``config.yaml`` with the published config, ``stage1_last.ckpt`` (the VQGAN, 16 384 codes) and
``stage2_last.ckpt`` (the 42-layer GPT) as ``{"state_dict": ...}``, and a CharBPE vocabulary of 16 384 ids
(synthetic tokens: the real one cannot be fetched here). About 11 GB of disk under ``--workdir``, removed at
the end; about 11 GB of memory at the peak.

    .venv/bin/python bench/mindalle_1p3b.py [--workdir /tmp/mindalle-1p3b] [--tokens 24] [--batch 1 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from dalle_dist import DALLE
from dalle_dist.convert.mindalle import DEFAULTS
from dalle_dist.models.sampling import sample_sequence
from dalle_dist.models.vqgan import VQModel, check_ddconfig

PUBLISHED = 1_291_081_728  # stage-2 parameters of the 1.3B (docs/pretrained_layouts.md)


def write_folder(folder: Path) -> None:
    """The published folder's files at the published sizes, weights random (std 0.02, minGPT's init)."""
    (folder / "tokenizer").mkdir(parents=True)
    config = {key: DEFAULTS[key] for key in ("dataset", "stage1", "stage2")}
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    s1, s2, h2 = config["stage1"], config["stage2"], config["stage2"]["hparams"]
    vocab = {"[UNK]": 0, "[PAD]": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    while len(vocab) < s2["vocab_size_txt"]:
        vocab[f"w{len(vocab)}</w>"] = len(vocab)
    (folder / "tokenizer/bpe-16k-vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "tokenizer/bpe-16k-merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    h1 = s1["hparams"]
    dd = check_ddconfig({**{k: v for k, v in h1.items() if k != "pdrop"}, "dropout": h1["pdrop"]})
    torch.save(
        {"state_dict": VQModel(dd, s1["n_embed"], s1["embed_dim"]).state_dict()}, folder / "stage1_last.ckpt"
    )
    d, txt, img = h2["embed_dim"], s2["vocab_size_txt"], s2["vocab_size_img"]

    def r(*shape: int) -> torch.Tensor:
        return torch.empty(*shape).normal_(0, 0.02)

    w = {"tok_emb_txt.weight": r(txt, d), "tok_emb_img.weight": r(img, d), "pos_emb_txt.weight": r(64, d),
         "pos_emb_img.weight": r(256, d), "ln_f.weight": torch.ones(d), "ln_f.bias": torch.zeros(d),
         "head_txt.weight": r(txt, d), "head_img.weight": r(img, d)}  # fmt: skip
    for i in range(h2["n_layers"]):
        b = f"blocks.{i}."
        for ln in ("ln1", "ln2"):
            w[f"{b}{ln}.weight"], w[f"{b}{ln}.bias"] = torch.ones(d), torch.zeros(d)
        for name in ("query", "key", "value", "proj"):
            w[f"{b}attn.{name}.weight"], w[f"{b}attn.{name}.bias"] = r(d, d), torch.zeros(d)
        w[f"{b}mlp.0.weight"], w[f"{b}mlp.0.bias"] = r(4 * d, d), torch.zeros(4 * d)
        w[f"{b}mlp.2.weight"], w[f"{b}mlp.2.bias"] = r(d, 4 * d), torch.zeros(d)
    print(f"stage 2 written with {sum(t.numel() for t in w.values()):,} parameters")
    torch.save({"state_dict": w}, folder / "stage2_last.ckpt")


def convert(folder: Path, output: Path) -> None:
    start = time.perf_counter()
    command = [sys.executable, "-m", "dalle_dist.convert", str(folder), "--output", str(output)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # KiB -> GiB
    size = sum(p.stat().st_size for p in output.iterdir()) / 1024**3
    print(f"converted in {time.perf_counter() - start:.0f} s, converter peak RSS {peak:.1f} GiB, "
          f"checkpoint {size:.2f} GiB")  # fmt: skip


def decode_rate(dalle: DALLE, batch: int, tokens: int, rounds: int) -> float:
    """Image tokens per second of cached decoding (top-k 256), the text prefill excluded: the difference
    between decoding ``tokens + 8`` and 8 tokens, median over rounds."""
    text = dalle.tokenizer.tokenize(["a painting of a tree on the ocean"] * batch, dalle.text_seq_len, True)
    ids = dalle.text_ids(text)

    def run(n: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            sample_sequence(dalle, ids, ids.shape[1] + n, filter_thres=256, temperature=1.0)
        return time.perf_counter() - start

    run(2)  # warm-up
    rates = []
    for _ in range(rounds):
        short, long = run(8), run(8 + tokens)
        rates.append(batch * tokens / (long - short))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mindalle-1p3b"))
    parser.add_argument("--tokens", type=int, default=24, help="image tokens timed per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    try:
        torch.manual_seed(0)
        write_folder(args.workdir / "1.3B")
        convert(args.workdir / "1.3B", args.workdir / "converted")
        shutil.rmtree(args.workdir / "1.3B")
        dalle = DALLE.from_pretrained(args.workdir / "converted")
        params = sum(p.numel() for p in dalle.parameters() if p.requires_grad)
        vae = sum(p.numel() for p in dalle.vae.parameters())
        print(f"DALLE trainable parameters {params:,} (published 1.3B: {PUBLISHED:,}, "
              f"{'equal' if params == PUBLISHED else 'DIFFERENT'}); VQGAN {vae:,} frozen")  # fmt: skip
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; cached decoding, top-k 256")
        rates = {}
        for dtype in (torch.float32, torch.bfloat16):
            dalle.to(dtype).vae.float()  # bf16: the transformer's weights and cache, as generate.py --bf16
            for batch in args.batch:
                rates[dtype, batch] = decode_rate(dalle, batch, args.tokens, args.rounds)
                name = str(dtype).removeprefix("torch.")
                print(f"  {name:>8} batch {batch}: {rates[dtype, batch]:.2f} image tokens/s")
        for batch in args.batch:
            ratio = rates[torch.bfloat16, batch] / rates[torch.float32, batch]
            print(f"  bf16 / fp32 at batch {batch}: {ratio:.2f}x")
    finally:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
