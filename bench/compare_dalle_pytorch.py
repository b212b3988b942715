"""dalle_dist against DALLE-pytorch 1.6.6 on this machine, in one process, as ratios measured in one run.

    bash bench/setup_dalle_pytorch.sh && \\
        bench/.venv-dalle-pytorch/bin/python bench/compare_dalle_pytorch.py [--quick] [--only SECTION ...] \\
        [--json PATH]

Both sides get the same hyper-parameters, shapes, seeds and thread count (2): dim 256, 8 heads x 32,
text_seq_len 64, 10000 text tokens, rotary embeddings and token shift on, loss_img_weight 7, ff_mult 4,
no dropout; a DiscreteVAE of 1024 codes (codebook_dim 256, hidden_dim 64, 3 layers: 64 px -> 8 x 8,
128 px -> 16 x 16 image tokens). "full" layout = attn_types ("full",), "mixed" = ("full", "axial_row",
"axial_col", "conv_like"). Times are medians of >= 5 repeats (--quick: 3, generation 2) after warm-up,
ours and theirs interleaved (A B A B ...) so that machine noise hits both alike. Ratio = ours / theirs
(< 1: we are faster); speedup = theirs / ours; speedup(min) compares the fastest repeats of each side.

Sections (--only picks some):
- train: one step (forward return_loss, backward, AdamW) at batch 4, depth 8; ours in fp32 and under
  torch.autocast("cpu", bfloat16), both against theirs in fp32, plus our bf16 vs fp32 loss on one batch.
- attention: one attention layer, forward + backward on x [4, n, 256], per pattern and grid. Theirs:
  Attention / SparseAxialCausalAttention (axis 0 = axial_row, 1 = axial_col) / SparseConvCausalAttention,
  built as their transformer.py builds them, with their rotary table. Ours: the layer of a depth-1 DALLE
  with that pattern under attn_impl structured / dense / auto. Their ``sparse`` needs DeepSpeed's removed
  CUDA kernel, so our ``sparse`` is compared with our ``full``. Also the growth exponent of the time in the
  image tokens between 16 x 16 and 32 x 32, and the peak memory added by one layer at 32 x 32 (fresh
  subprocess per setting, glibc's mmap threshold lowered so freed tensors leave the resident set).
- generate: 4 images, depth 4, filter_thres 0.9, KV caches on for both; the time includes the small VAE's
  decode on both sides. DALLE-pytorch's ``generate_images(use_cache=True)`` only hands its cache to the
  model through ``forward_with_cond_scale`` when cond_scale != 1 (which also runs a second, null-text
  pass); at cond_scale 1 the cache is silently dropped. So the harness replaces that method on their
  instance by one that forwards ``cache`` to ``forward`` at cond_scale 1 (their own forward and cache code
  run unchanged). Our cached tokens are checked against our uncached tokens under the same seed (--quick:
  only the last 16 image tokens are sampled, the rest primed from an image); without --quick their
  uncached path (their default) also runs once, at 128 px full layout, for its time and the same check.
- reversible: reversible DALLE (full layout) at 128 px, batch 4, depth 16 vs depth 4: added peak RSS of one
  forward + backward (fresh subprocess) and the bytes autograd saves (saved-tensor hooks; DALLE-pytorch's
  reversible function keeps its output as ``ctx.y``, which the hooks do not see).
- vae: DiscreteVAE step (forward return_loss, backward, Adam) and get_codebook_indices rate, 128 px,
  batch 8: fp32, fp32 --compile (its first call's compile time apart), and where the CPU has bf16
  arithmetic each quantizer in bf16 channels-last (gumbel also compiled).
- peak: the machine's matmul peak (dalle_dist.training.throughput.matmul_peak) in fp32 and bf16 and our MFU
  for the 128 px full-layout training step (dalle_flops_per_sample).
A summary of every target (PASS / MISS) closes the run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Callable
from contextlib import nullcontext

import torch

THREADS = 2
BASE = {"dim": 256, "heads": 8, "dim_head": 32, "text_seq_len": 64, "num_text_tokens": 10000}
COMMON = {
    "rotary_emb": True,
    "shift_tokens": True,
    "loss_img_weight": 7,
    "stable": False,
    "sandwich_norm": False,
    "attn_dropout": 0.0,
    "ff_dropout": 0.0,
}
VAE = {"num_tokens": 1024, "codebook_dim": 256, "hidden_dim": 64, "num_layers": 3}
# each quantizer at 1 024 codes (FSQ: levels 8,8,4,4)
FAST_VAE = {"gumbel": {}, "vq": {}, "fsq": {"num_tokens": None, "fsq_levels": [8, 8, 4, 4]}, "lfq": {}}
LAYOUTS = {"full": ("full",), "mixed": ("full", "axial_row", "axial_col", "conv_like")}
SECTIONS = ("train", "attention", "generate", "reversible", "vae", "peak")
SPARSE = ("axial_row", "axial_col", "conv_like")
IMPLS = ("structured", "dense", "auto")
BATCH = 4
RESULTS: dict = {}


# ------------------------------------------------------------------------------------------- helpers
def import_theirs():
    """Import DALLE-pytorch. Its vae.py imports taming's VQGAN module at import time, which needs
    torchvision (not installable beside CPU torch 2.13): that one module is stubbed; VQGanVAE is unused."""
    if "taming.models.vqgan" not in sys.modules:
        stub = types.ModuleType("taming.models.vqgan")
        stub.VQModel = stub.GumbelVQ = None
        sys.modules["taming.models.vqgan"] = stub
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources' deprecation warning
        import dalle_pytorch
    return dalle_pytorch


class Timing(dict):
    """Median seconds per name; ``.best`` holds the minimum of the same repeats."""

    best: dict[str, float]


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int) -> Timing:
    """Median seconds per call of each function, calls interleaved A B C A B C ... after warm-up."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    out = Timing({name: statistics.median(t) for name, t in times.items()})
    out.best = {name: min(t) for name, t in times.items()}
    return out


def header(*cols: str) -> None:
    print(f"{cols[0]:<36}" + "".join(f"{c:>{max(12, len(c) + 2)}}" for c in cols[1:]))


TABLE = ("ours ms", "theirs ms", "ours/theirs", "speedup", "speedup(min)")


def row(label: str, ours: float, theirs: float, best: tuple[float, float] | None = None) -> None:
    """Times in seconds: ours, theirs (medians), ratio ours/theirs, speedup theirs/ours, and the speedup of
    the fastest repeats (less sensitive to other load on the machine)."""
    cells = f"{ours * 1e3:>12.1f}{theirs * 1e3:>12.1f}{ours / theirs:>12.2f}{theirs / ours:>11.2f}x"
    if best is not None:
        cells += f"{best[1] / best[0]:>13.2f}x"
    print(f"{label:<36}" + cells)


def child(spec: dict) -> dict:
    """Run ``spec`` in a fresh interpreter (glibc's mmap threshold lowered) and return its JSON result."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def build_dalles(dp, size: int, attn_types: tuple[str, ...], depth: int, **ours_kwargs):
    """(ours, theirs) with the same hyper-parameters, each initialised from seed 0."""
    from dalle_dist import DALLE, DiscreteVAE

    torch.manual_seed(0)
    ours = DALLE(
        vae=DiscreteVAE(image_size=size, **VAE),
        depth=depth,
        attn_types=attn_types,
        **BASE,
        **COMMON,
        **ours_kwargs,
    )
    theirs = None
    if dp is not None:
        rev = ours_kwargs.get("reversible", False)
        torch.manual_seed(0)
        theirs = dp.DALLE(
            vae=dp.DiscreteVAE(image_size=size, **VAE),
            depth=depth,
            attn_types=attn_types,
            reversible=rev,
            **BASE,
            **COMMON,
        )
    return ours, theirs


def batch_for(size: int, batch: int = BATCH, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, BASE["num_text_tokens"], (batch, BASE["text_seq_len"]), generator=g)
    image = torch.randint(0, VAE["num_tokens"], (batch, (size // 8) ** 2), generator=g)
    return text, image


def trainer(model, text, image, bf16: bool = False) -> Callable[[], None]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> float:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        with ctx:
            loss = model(text.clone(), image, return_loss=True)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


# ------------------------------------------------------------------------------------------- train
def section_train(dp, args) -> None:
    sizes = (128,) if args.quick else (64, 128)
    print(f"\n== train: step (fwd return_loss + bwd + AdamW), batch {BATCH}, depth 8 ==")
    header("setting", *TABLE)
    out = RESULTS.setdefault("train", {})
    for size in sizes:
        for layout, attn_types in LAYOUTS.items():
            ours, theirs = build_dalles(dp, size, attn_types, depth=8)
            ours_bf16, _ = build_dalles(None, size, attn_types, depth=8)
            text, image = batch_for(size)
            with torch.no_grad():
                loss32 = float(ours(text, image, return_loss=True))
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss16 = float(ours_bf16(text, image, return_loss=True))
            t = interleaved(
                {
                    "ours": trainer(ours, text, image),
                    "ours_bf16": trainer(ours_bf16, text, image, bf16=True),
                    "theirs": trainer(theirs, text, image),
                },
                args.repeats,
                args.warmup,
            )
            name = f"{size}px {layout}"
            row(f"{name} fp32", t["ours"], t["theirs"], (t.best["ours"], t.best["theirs"]))
            row(
                f"{name} ours bf16 vs their fp32",
                t["ours_bf16"],
                t["theirs"],
                (t.best["ours_bf16"], t.best["theirs"]),
            )
            print(f"{'':<36}first-batch loss: ours fp32 {loss32:.4f}, ours bf16 {loss16:.4f} "
                  f"(|diff| {abs(loss32 - loss16):.4f})")  # fmt: skip
            out[name] = {
                "ours_ms": t["ours"] * 1e3,
                "ours_bf16_ms": t["ours_bf16"] * 1e3,
                "theirs_ms": t["theirs"] * 1e3,
                "best_ms": {k: v * 1e3 for k, v in t.best.items()},
                "loss_fp32": loss32,
                "loss_bf16": loss16,
            }
            del ours, ours_bf16, theirs


# ------------------------------------------------------------------------------------------- attention
def attention_layers(dp, pattern: str, fmap: int, impls: tuple[str, ...] = IMPLS):
    """{name: (layer call x -> out, n)}: ours per impl (and theirs where the pattern exists there)."""
    from dalle_dist import DALLE, DiscreteVAE

    layers = {}
    for impl in impls:
        torch.manual_seed(0)
        dalle = DALLE(
            vae=DiscreteVAE(image_size=fmap * 8, num_tokens=64, codebook_dim=16, hidden_dim=8, num_layers=3),
            depth=1,
            attn_types=(pattern,),
            attn_impl=impl,
            **BASE,
            **COMMON,
        )
        attn, spec, rotary = (
            dalle.transformer.attns["0"].fn,
            dalle.planner.plans(torch.device("cpu"))[0],
            dalle.rotary,
        )
        layers[f"ours {impl}"] = (attn, lambda x, a=attn, s=spec, r=rotary: a(x, s, r))
    n = BASE["text_seq_len"] + fmap * fmap  # training length: every position but the last
    if dp is not None and pattern != "sparse":
        from dalle_pytorch import attention as their_attn
        from dalle_pytorch.transformer import Transformer

        seq_len = n
        kw = {"causal": True, "seq_len": seq_len, "heads": BASE["heads"], "dim_head": BASE["dim_head"]}
        torch.manual_seed(0)
        if pattern == "full":
            layer = their_attn.Attention(BASE["dim"], stable=False, dropout=0.0, **kw)
        elif pattern in ("axial_row", "axial_col"):
            axis = 0 if pattern == "axial_row" else 1
            layer = their_attn.SparseAxialCausalAttention(
                BASE["dim"], axis=axis, image_size=fmap, stable=False, dropout=0.0, **kw
            )
        else:
            layer = their_attn.SparseConvCausalAttention(
                BASE["dim"], image_size=fmap, stable=False, dropout=0.0, **kw
            )
        pos_emb = Transformer(
            dim=BASE["dim"],
            depth=1,
            seq_len=seq_len,
            heads=BASE["heads"],
            dim_head=BASE["dim_head"],
            image_fmap_size=fmap,
            rotary_emb=True,
        ).pos_emb
        layers["theirs"] = (layer, lambda x, a=layer, p=pos_emb: a(x, rotary_pos_emb=p))
    return layers, n


def fwd_bwd(module, call, x) -> Callable[[], None]:
    def run() -> None:
        x.grad = None
        module.zero_grad(set_to_none=True)
        call(x).sum().backward()

    return run


def attn_memory(spec: dict) -> dict:
    dp = import_theirs() if spec["name"] == "theirs" else None
    impls = (spec["name"].split()[1],) if spec["name"] != "theirs" else ()
    layers, n = attention_layers(dp, spec["pattern"], spec["fmap"], impls)
    module, call = layers[spec["name"]]
    x = torch.randn(BATCH, n, BASE["dim"], requires_grad=True)
    return measure_memory(lambda: call(x).sum(), module)


def section_attention(dp, args) -> None:
    grids = (16, 32) if args.quick else (8, 16, 32)
    print(f"\n== attention: one layer fwd + bwd, batch {BATCH}, text 64, fp32 ==")
    header("grid pattern: ours impl", *TABLE)
    out = RESULTS.setdefault("attention", {})
    for fmap in grids:
        for pattern in ("full", *SPARSE, "sparse"):
            impls = ("auto",) if pattern == "full" else args.impls
            layers, n = attention_layers(dp, pattern, fmap, impls)
            torch.manual_seed(2)
            x = torch.randn(BATCH, n, BASE["dim"], requires_grad=True)
            fns = {name: fwd_bwd(m, call, x) for name, (m, call) in layers.items()}
            if pattern == "sparse":  # no DALLE-pytorch kernel on CPU: our full layer is the reference
                full, _ = attention_layers(None, "full", fmap, ("auto",))
                fns["theirs"] = fwd_bwd(*full["ours auto"], x)
            if pattern == "full":  # a layer's floor: its q/k/v and output projections, no attention at all
                attn = layers["ours auto"][0]
                fns["projections"] = fwd_bwd(
                    attn, lambda x, a=attn: a.to_out(a.to_qkv(x)[..., -a.to_out.in_features :]), x
                )
            t = interleaved(fns, args.repeats, args.warmup)
            if pattern == "full":
                projections = t.pop("projections")
                out[f"{fmap} projections"] = {"ours_ms": projections * 1e3}
                print(f"{fmap}x{fmap} q/k/v + output projections alone {projections * 1e3:>8.1f} ms: "
                      f"a layer at most {t['theirs'] / projections:.2f}x faster than their full layer "
                      "with free attention")  # fmt: skip
            ref = "our full" if pattern == "sparse" else "theirs"
            for impl in impls:
                label = f"{fmap}x{fmap} {pattern}: {impl}" + (" (vs our full)" if ref == "our full" else "")
                row(label, t[f"ours {impl}"], t["theirs"], (t.best[f"ours {impl}"], t.best["theirs"]))
            out[f"{fmap} {pattern}"] = {
                "n": n,
                "reference": ref,
                "theirs_ms": t["theirs"] * 1e3,
                **{f"ours_{impl}_ms": t[f"ours {impl}"] * 1e3 for impl in impls},
                "best_ms": {k: v * 1e3 for k, v in t.best.items()},
            }
    if 16 in grids and 32 in grids:
        print("growth of the time in image tokens, 16x16 -> 32x32: log(t32/t16) / log(1024/256)")
        for pattern in ("full", *SPARSE, "sparse"):
            a, b = out[f"16 {pattern}"], out[f"32 {pattern}"]
            impls = ("auto",) if pattern == "full" else args.impls
            cells = {
                impl: math.log(b[f"ours_{impl}_ms"] / a[f"ours_{impl}_ms"]) / math.log(4) for impl in impls
            }
            theirs = math.log(b["theirs_ms"] / a["theirs_ms"]) / math.log(4)
            label = "our full" if pattern == "sparse" else "theirs"
            text = ", ".join(f"ours {k} {v:.2f}" for k, v in cells.items())
            print(f"  {pattern:<10} {text}; {label} {theirs:.2f}")
            for impl, v in cells.items():
                out[f"32 {pattern}"][f"ours_{impl}_exponent"] = v
            out[f"32 {pattern}"]["theirs_exponent"] = theirs
    if args.skip_memory:
        return
    print("peak memory of one layer fwd + bwd at 32x32 (fresh subprocess; MiB added / MiB saved for bwd):")
    for pattern in ("full", *SPARSE, "sparse"):
        names = ["ours auto"] if pattern == "full" else [f"ours {impl}" for impl in args.impls]
        if args.quick and pattern != "full":
            names = ["ours auto"]
        names.append("theirs" if pattern != "sparse" else "ours full")
        cells = []
        for name in names:
            spec = {"kind": "attn", "name": name, "pattern": pattern, "fmap": 32}
            if name == "ours full":
                spec = {**spec, "name": "ours auto", "pattern": "full"}
            r = child(spec)
            out[f"32 {pattern}"][f"{name.replace(' ', '_')}_peak_mib"] = r["peak_added_kib"] / 1024
            out[f"32 {pattern}"][f"{name.replace(' ', '_')}_saved_mib"] = r["saved_bytes"] / 2**20
            cells.append(f"{name} {r['peak_added_kib'] / 1024:.0f} / {r['saved_bytes'] / 2**20:.0f}")
        print(f"  {pattern:<10} " + "; ".join(cells))


# ------------------------------------------------------------------------------------------- generate
def cache_through(theirs) -> None:
    """Make DALLE-pytorch's ``use_cache`` reach its forward at cond_scale 1 (see the module docstring)."""
    original = theirs.forward_with_cond_scale

    def forward_with_cond_scale(*args, cond_scale=1, cache=None, **kwargs):
        if cond_scale == 1:
            return theirs(*args, cache=cache, **kwargs)
        return original(*args, cond_scale=cond_scale, cache=cache, **kwargs)

    theirs.forward_with_cond_scale = forward_with_cond_scale


def linear_floor(model, batch: int, repeats: int) -> float:
    """Seconds that the decode steps of one generation spend in their linear layers alone: each step
    multiplies ``batch`` rows by every transformer weight and the image half of the logit layer. Small
    batches make these products read-bound, so this is a floor for any decoder of these weights in fp32."""
    weights = [m.weight for m in model.transformer.modules() if isinstance(m, torch.nn.Linear)]
    weights.append(model.to_logits.weight[model.num_text_tokens :])
    rows = {w.shape[1]: torch.randn(batch, w.shape[1]) for w in weights}
    steps = model.image_seq_len

    def run() -> None:
        with torch.inference_mode():
            for _ in range(steps):
                for w in weights:
                    torch.nn.functional.linear(rows[w.shape[1]], w)

    return interleaved({"floor": run}, repeats, 1)["floor"]


def capture_tokens(model, fn: Callable[[], object]) -> torch.Tensor:
    """The image tokens ``fn`` hands to ``model.vae.decode``."""
    seen = []
    decode = model.vae.decode
    model.vae.decode = lambda seq: (seen.append(seq.clone()), decode(seq))[1]
    try:
        fn()
    finally:
        del model.vae.decode
    return seen[-1]


def section_generate(dp, args) -> None:
    sizes = (128,) if args.quick else (64, 128)
    print("\n== generate: 4 images, depth 4, filter_thres 0.9, KV cache on (incl. VAE decode) ==")
    header("setting", *TABLE)
    out = RESULTS.setdefault("generate", {})
    text, _ = batch_for(64)
    for size in sizes:
        for layout, attn_types in LAYOUTS.items():
            ours, theirs = build_dalles(dp, size, attn_types, depth=4)
            cache_through(theirs)
            seeds = iter(range(10**6))

            def gen(model, seed=None, use_cache=True, seeds=seeds, **kwargs):
                def run():
                    torch.manual_seed(next(seeds) if seed is None else seed)
                    return model.generate_images(text, filter_thres=0.9, use_cache=use_cache, **kwargs)

                return run

            fns = {"ours": gen(ours), "ours_compiled": gen(ours, compile=True), "theirs": gen(theirs)}
            start = time.perf_counter()
            fns["ours_compiled"]()  # the first call compiles the decode step
            compile_s = time.perf_counter() - start
            t = interleaved(fns, args.gen_repeats, 1)
            name = f"{size}px {layout}"
            row(f"{name} (both cached)", t["ours"], t["theirs"], (t.best["ours"], t.best["theirs"]))
            row(
                f"{name} ours compiled",
                t["ours_compiled"],
                t["theirs"],
                (t.best["ours_compiled"], t.best["theirs"]),
            )
            floor = linear_floor(ours, len(text), args.gen_repeats)
            print(f"{'':<36}first compiled call {compile_s:.0f} s; the steps' linear layers alone (every "
                  f"weight read once per token, batch {len(text)}): {floor * 1e3:.0f} ms, so "
                  f"{t['theirs'] / floor:.2f}x their time at most")  # fmt: skip
            rec = {"ours_ms": t["ours"] * 1e3, "theirs_ms": t["theirs"] * 1e3}
            rec["ours_compiled_ms"] = t["ours_compiled"] * 1e3
            rec["linear_floor_ms"], rec["compile_s"] = floor * 1e3, compile_s
            rec["best_ms"] = {k: v * 1e3 for k, v in t.best.items()}
            # cached vs uncached tokens under one seed; --quick primes all but the last 16 image tokens
            prime = {}
            if args.quick:
                img = torch.rand(len(text), 3, size, size, generator=torch.Generator().manual_seed(5))
                prime = {"img": img, "num_init_img_tokens": (size // 8) ** 2 - 16}
            sides = {"ours": ours}
            if size == 128 and layout == "full" and not args.quick:
                sides["theirs"] = theirs  # their uncached path (their default), once
            compiled = capture_tokens(ours, gen(ours, seed=7, compile=True, **prime))
            for side, model in sides.items():
                cached = capture_tokens(model, gen(model, seed=7, **prime))
                start = time.perf_counter()
                plain = capture_tokens(model, gen(model, seed=7, use_cache=False, **prime))
                uncached_s = time.perf_counter() - start
                same = (cached == plain).float().mean().item()
                what = "last 16 tokens" if prime else "all tokens"
                print(f"{'':<36}{side} cached == uncached ({what}): {same == 1.0} "
                      f"({same:.1%} of positions); uncached once {uncached_s * 1e3:.0f} ms")  # fmt: skip
                rec[f"{side}_cache_equal"] = same == 1.0
                if side == "ours":
                    rec["ours_compiled_equal"] = torch.equal(compiled, plain)
                    print(f"{'':<36}ours compiled == uncached: {rec['ours_compiled_equal']}")
                if not prime:
                    rec[f"{side}_uncached_ms"] = uncached_s * 1e3
            if "theirs_uncached_ms" in rec:
                row(f"{name} ours cached vs their uncached", t["ours"], rec["theirs_uncached_ms"] / 1e3)
            out[name] = rec
            del ours, theirs


# ------------------------------------------------------------------------------------------- reversible
def peak_rss_kib() -> int:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries the parent's resident set at
    fork into a child's ru_maxrss across exec, which would hide the child's own peak under the harness's."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def measure_memory(run: Callable[[], torch.Tensor], module=None) -> dict:
    """Saved-activation bytes and added peak RSS (KiB) of ``run().backward()`` (first call only)."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    base = peak_rss_kib()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = run()
    loss.backward()
    peak = peak_rss_kib()
    grad_kib = 0
    if module is not None:
        grad_kib = sum(
            p.grad.numel() * p.grad.element_size() for p in module.parameters() if p.grad is not None
        )
        grad_kib //= 1024
    return {"saved_bytes": sum(storages.values()), "peak_added_kib": peak - base, "grad_kib": grad_kib}


def rev_memory(spec: dict) -> dict:
    dp = import_theirs() if spec["side"] == "theirs" else None
    ours, theirs = build_dalles(dp, 128, ("full",), depth=spec["depth"], reversible=True)
    model = theirs if spec["side"] == "theirs" else ours
    text, image = batch_for(128)
    return measure_memory(lambda: model(text, image, return_loss=True), model)


def section_reversible(dp, args) -> None:
    del dp
    print(f"\n== reversible: DALLE full layout, 128px, batch {BATCH}, one fwd + bwd, fresh subprocess ==")
    print(f"{'side':<8}{'depth':>6}{'peak+ MiB':>11}{'grads MiB':>11}{'saved MiB':>11}"
          f"{'peak d/d4':>11}{'peak-grads d/d4':>17}{'saved d/d4':>12}")  # fmt: skip
    out = RESULTS.setdefault("reversible", {})
    for side in ("ours", "theirs"):
        res = {d: child({"kind": "rev", "side": side, "depth": d}) for d in (4, 16)}
        for d, r in res.items():
            b = res[4]
            net = (r["peak_added_kib"] - r["grad_kib"]) / max(b["peak_added_kib"] - b["grad_kib"], 1)
            saved = r["saved_bytes"] / max(b["saved_bytes"], 1)
            print(f"{side:<8}{d:>6}{r['peak_added_kib'] / 1024:>11.1f}{r['grad_kib'] / 1024:>11.1f}"
                  f"{r['saved_bytes'] / 2**20:>11.1f}{r['peak_added_kib'] / b['peak_added_kib']:>11.2f}"
                  f"{net:>17.2f}{saved:>12.2f}")  # fmt: skip
        out[side] = {
            str(d): {**r, "peak_ratio_vs_d4": r["peak_added_kib"] / res[4]["peak_added_kib"]}
            for d, r in res.items()
        }
        out[side]["peak_minus_grads_ratio"] = (res[16]["peak_added_kib"] - res[16]["grad_kib"]) / max(
            res[4]["peak_added_kib"] - res[4]["grad_kib"], 1
        )
    print("(their reversible keeps its output in ctx.y, which saved-tensor hooks do not see: their saved")
    print(" bytes are a floor; peak+ is the figure to compare)")


# ------------------------------------------------------------------------------------------- vae
def section_vae(dp, args) -> None:
    from dalle_dist import DiscreteVAE
    from dalle_dist.devices import cpu_computes_bf16

    batch = 8
    print(f"\n== vae: DiscreteVAE 128px, batch {batch} (1024 codes, codebook 256, hidden 64, 3 layers) ==")
    header("setting", *TABLE)
    torch.manual_seed(0)
    ours = DiscreteVAE(image_size=128, **VAE)
    torch.manual_seed(0)
    theirs = dp.DiscreteVAE(image_size=128, **VAE)
    images = torch.rand(batch, 3, 128, 128, generator=torch.Generator().manual_seed(3))

    def step(model, bf16: bool = False):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
                loss = model(images, return_loss=True)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    # what train_vae.py --compile does: the encoder and decoder compiled in place (a copy, so "ours" stays
    # eager); the first call compiles, timed apart
    torch.manual_seed(0)
    compiled = DiscreteVAE(image_size=128, **VAE)
    for region in compiled.blocks():
        region.compile(dynamic=False)
    compiled_step = step(compiled)
    start = time.perf_counter()
    compiled_step()
    compile_s = time.perf_counter() - start
    t = interleaved(
        {"ours": step(ours), "ours_compiled": compiled_step, "theirs": step(theirs)},
        args.repeats,
        args.warmup,
    )
    row("train step", t["ours"], t["theirs"], (t.best["ours"], t.best["theirs"]))
    row("train step --compile", t["ours_compiled"], t["theirs"], (t.best["ours_compiled"], t.best["theirs"]))
    print(f"{'':<36}first compiled call {compile_s:.0f} s")
    RESULTS["vae"] = {
        "step_ours_ms": t["ours"] * 1e3,
        "step_ours_compiled_ms": t["ours_compiled"] * 1e3,
        "compile_s": compile_s,
        "step_theirs_ms": t["theirs"] * 1e3,
    }
    if cpu_computes_bf16():
        # what train_vae.py --bf16 does: bf16 autocast, the VAE in channels-last memory format (fp32
        # weights); with --compile on top for gumbel
        fast = {}
        for quantizer, codebook in FAST_VAE.items():
            torch.manual_seed(0)
            model = DiscreteVAE(image_size=128, **{**VAE, **codebook}, quantizer=quantizer)
            fast[quantizer] = step(model.to(memory_format=torch.channels_last), bf16=True)
        for region in compiled.blocks():
            region.to(memory_format=torch.channels_last)
        fast["gumbel_compiled"] = step(compiled.to(memory_format=torch.channels_last), bf16=True)
        fast["gumbel_compiled"]()  # compiles the bf16 graphs
        f = interleaved({**fast, "theirs": step(theirs)}, args.repeats, args.warmup)
        for quantizer in fast:
            label = f"train step bf16 channels-last {quantizer.replace('_compiled', ' --compile')}"
            row(label, f[quantizer], f["theirs"], (f.best[quantizer], f.best["theirs"]))
        RESULTS["vae"].update(
            {f"step_ours_bf16_cl_{q}_ms": f[q] * 1e3 for q in fast},
            step_theirs_ms_beside_bf16=f["theirs"] * 1e3,
        )
    else:
        print("(bf16 rows skipped: this CPU has no bf16 arithmetic, where bf16 runs 11-46x slower than fp32)")
    e = interleaved(
        {
            "ours": lambda: ours.get_codebook_indices(images),
            "theirs": lambda: theirs.get_codebook_indices(images),
        },
        args.repeats,
        args.warmup,
    )
    row(f"encode (ms per {batch} images)", e["ours"], e["theirs"], (e.best["ours"], e.best["theirs"]))
    print(f"{'encode images/s':<36}{batch / e['ours']:>12.1f}{batch / e['theirs']:>12.1f}")
    RESULTS["vae"].update(encode_ours_img_s=batch / e["ours"], encode_theirs_img_s=batch / e["theirs"])


# ------------------------------------------------------------------------------------------- peak
def section_peak(dp, args) -> None:
    from dalle_dist.training.throughput import dalle_flops_per_sample, matmul_peak

    print("\n== peak: matmul peak and our MFU, 128px full layout training step (batch 4, depth 8) ==")
    cpu = torch.device("cpu")
    peak32 = max(matmul_peak(cpu, torch.float32, seconds=1.0) for _ in range(2))
    peak16 = max(matmul_peak(cpu, torch.bfloat16, seconds=1.0) for _ in range(2))
    ours, _ = build_dalles(None, 128, ("full",), depth=8)
    flops = dalle_flops_per_sample(ours) * BATCH
    train = RESULTS.get("train", {}).get("128px full")
    if train is None:  # the train section did not run: time our step here
        ours_bf16, _ = build_dalles(None, 128, ("full",), depth=8)
        text, image = batch_for(128)
        t = interleaved(
            {"fp32": trainer(ours, text, image), "bf16": trainer(ours_bf16, text, image, bf16=True)},
            args.repeats,
            args.warmup,
        )
        t32, t16 = t["fp32"], t["bf16"]
    else:
        t32, t16 = train["ours_ms"] / 1e3, train["ours_bf16_ms"] / 1e3
    mfu32, mfu16 = flops / t32 / peak32, flops / t16 / peak16
    print(f"matmul peak: fp32 {peak32 / 1e9:.0f} GFLOP/s, bf16 {peak16 / 1e9:.0f} GFLOP/s "
          f"({THREADS} threads)")  # fmt: skip
    print(f"step FLOPs {flops / 1e9:.1f} G; fp32 {t32 * 1e3:.0f} ms -> {flops / t32 / 1e9:.0f} GFLOP/s, "
          f"MFU {mfu32:.1%} of fp32 peak; bf16 {t16 * 1e3:.0f} ms -> {flops / t16 / 1e9:.0f} GFLOP/s, "
          f"MFU {mfu16:.1%} of bf16 peak ({flops / t16 / peak32:.1%} of fp32 peak)")  # fmt: skip
    RESULTS["peak"] = {
        "fp32_gflops": peak32 / 1e9,
        "bf16_gflops": peak16 / 1e9,
        "step_gflop": flops / 1e9,
        "mfu_fp32": mfu32,
        "mfu_bf16": mfu16,
    }


# ------------------------------------------------------------------------------------------- summary
def summary() -> None:
    lines = []

    def target(name: str, value: float | None, ok: bool | None, fmt: str) -> None:
        if value is None:
            lines.append(f"  {'-':<5} {name}: not measured")
        else:
            lines.append(f"  {'PASS' if ok else 'MISS':<5} {name}: {fmt.format(value)}")

    train = RESULTS.get("train", {})
    for layout in LAYOUTS:
        r = train.get(f"128px {layout}")
        for key, label in (("ours_ms", "fp32"), ("ours_bf16_ms", "bf16")):
            v = r["theirs_ms"] / r[key] if r else None
            target(f"train 128px {layout} {label} speedup >= 3x", v, v is not None and v >= 3, "{:.2f}x")
    att = RESULTS.get("attention", {})
    for pattern in SPARSE:
        r = att.get(f"32 {pattern}")
        v = r["theirs_ms"] / r["ours_auto_ms"] if r else None
        proj = att.get("32 projections")
        bound = f" (projections alone allow {r['theirs_ms'] / proj['ours_ms']:.2f}x)" if r and proj else ""
        target(
            f"attention 32x32 {pattern} (auto) speedup >= 3x", v, v is not None and v >= 3, "{:.2f}x" + bound
        )
        e = r.get("ours_auto_exponent") if r else None
        target(
            f"attention {pattern} (auto) growth exponent <= 1.5", e, e is not None and e <= 1.5, "N^{:.2f}"
        )
    gen = RESULTS.get("generate", {})
    for layout in LAYOUTS:
        r = gen.get(f"128px {layout}")
        for key, how in (("ours_ms", ""), ("ours_compiled_ms", ", ours compiled")):
            v = r["theirs_ms"] / r[key] if r else None
            target(
                f"generate 128px {layout} speedup >= 3x (their cached{how})",
                v,
                v is not None and v >= 3,
                "{:.2f}x",
            )
    rev = RESULTS.get("reversible", {}).get("ours")
    v = rev["16"]["peak_ratio_vs_d4"] if rev else None
    target("reversible peak depth16/depth4 <= 1.3", v, v is not None and v <= 1.3, "{:.2f}")
    v = rev["peak_minus_grads_ratio"] if rev else None
    target("  same, less the parameter gradients", v, v is not None and v <= 1.3, "{:.2f}")
    peak = RESULTS.get("peak")
    for key in ("mfu_fp32", "mfu_bf16"):
        v = peak[key] if peak else None
        target(f"MFU ({key[4:]}) >= 35%", v, v is not None and v >= 0.35, "{:.1%}")
    print("\n== summary vs targets ==")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats and settings (smoke run)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="SECTION")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 7, quick 3)")
    parser.add_argument(
        "--impls",
        nargs="+",
        default=list(IMPLS),
        metavar="IMPL",
        help="our attn_impl values timed in the attention section (auto is always added)",
    )
    parser.add_argument("--skip_memory", action="store_true", help="no per-layer memory subprocesses")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to PATH")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows while a long section runs
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(attn_memory(spec) if spec["kind"] == "attn" else rev_memory(spec)))
        return
    args.impls = tuple(dict.fromkeys([*args.impls, "auto"]))
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.warmup = 1 if args.quick else 2
    args.gen_repeats = 2 if args.quick else 5
    dp = import_theirs()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; dalle_pytorch {dp.__version__}; "
          f"median of {args.repeats} (generate {args.gen_repeats}) after {args.warmup} warm-up, "
          "interleaved")  # fmt: skip
    started = time.perf_counter()
    for name in SECTIONS:
        if name in args.only:
            t = time.perf_counter()
            globals()[f"section_{name}"](dp, args)
            print(f"({name}: {time.perf_counter() - t:.0f} s)")
    summary()
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(RESULTS, f, indent=1)


if __name__ == "__main__":
    main()
