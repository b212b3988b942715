"""``--compile``: regional torch.compile of the training step, run by the real scripts (single process and
torchrun DDP), against eager runs of the same settings."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_DALLE, TINY_VAE, launch_2_ranks, run_cmd, small_dalle
from safetensors.torch import load_file

from dalle_dist.training.compile import compile_regions, eager, regions

# inductor draws its own random numbers unless told to call torch's: with them, a compiled Gumbel VAE
# samples the same noise as an eager one, so the two runs can be compared weight for weight
SAME_RANDOM = {"TORCHINDUCTOR_FALLBACK_RANDOM": "1"}
DALLE_FLAGS = [*TINY_DALLE.split(), "--log_every", "1", "--save_every_n_steps", "100"]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys(), "compiled regions keep the parameter names"
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-5, rtol=1e-4, msg=key)


def test_regions_are_the_repeated_blocks():
    """DALL-E's regions are its transformer branches (one per attention / feed-forward of each layer) and
    the VAE's encoder and decoder; a module without regions is compiled whole."""
    dalle = small_dalle()
    found = regions(dalle)
    assert len(found) == 2 * 2 + 2
    assert found[:4] == [*dalle.transformer.attns.values(), *dalle.transformer.ffs.values()]
    assert found[4:] == [dalle.vae.encoder, dalle.vae.decoder]
    plain = torch.nn.Linear(2, 2)
    assert regions(plain) == [plain]


def test_compiled_dalle_matches_eager_and_eager_stance_skips_compiling():
    """Same loss and gradients as eager in fp32; inside ``eager()`` nothing is compiled (sampling)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    dalle = small_dalle()
    text, image = torch.randint(1, 50, (2, 6)), torch.rand(2, 3, 16, 16)
    loss = dalle(text, image, return_loss=True)
    loss.backward()
    expected = {n: p.grad.clone() for n, p in dalle.named_parameters() if p.grad is not None}
    dalle.zero_grad()
    keys = list(dalle.state_dict())
    assert compile_regions(dalle) == 6
    assert list(dalle.state_dict()) == keys
    with eager():
        torch.testing.assert_close(dalle(text, image, return_loss=True), loss)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0, "eager() compiled something"
    compiled = dalle(text, image, return_loss=True)
    compiled.backward()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "nothing was compiled"
    torch.testing.assert_close(compiled, loss, atol=1e-6, rtol=1e-5)
    for name, grad in expected.items():
        torch.testing.assert_close(dict(dalle.named_parameters())[name].grad, grad, atol=1e-6, rtol=1e-4)


@pytest.mark.slow
def test_compiled_dalle_matches_eager_under_bf16_autocast():
    """Under bf16 autocast (--bf16) the compiled loss and gradients match eager's within bf16 rounding: the
    compiler keeps in fp32 what eager rounds to bf16 between operations; they differ by rounding only."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    dalle = small_dalle()
    text, image = torch.randint(1, 50, (2, 6)), torch.rand(2, 3, 16, 16)

    def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        dalle.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = dalle(text, image, return_loss=True)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in dalle.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads()
    compile_regions(dalle)
    compiled_loss, compiled_grads = loss_and_grads()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "nothing was compiled"
    assert compiled_grads.keys() == grads.keys()
    torch.testing.assert_close(compiled_loss, loss, atol=2e-2, rtol=1e-2)  # bf16: 8 bits of mantissa
    for name, grad in grads.items():
        scale = grad.abs().max().clamp(min=1e-3)
        assert (compiled_grads[name] - grad).abs().max() <= 0.05 * scale, name


@pytest.mark.slow
def test_train_vae_compiled_equals_eager(tmp_path):
    """train_vae.py --compile (Gumbel quantizer, samples drawn mid-run) trains the weights eager does."""
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        runs[name] = tmp_path / name
        proc = run_cmd(
            [sys.executable, ROOT / "train_vae.py", "--output", runs[name], "--max_steps", "4",
             "--sample_every", "2", *TINY_VAE.split(), *extra],
            **SAME_RANDOM,
        )  # fmt: skip
    assert "--compile: 2 regions compiled" in proc.stdout
    assert re.search(r"--compile: [1-9]\d* graphs compiled in", proc.stdout), proc.stdout
    assert (runs["compiled"] / "samples").is_dir()
    assert_same_weights(runs["eager"], runs["compiled"])


@pytest.fixture(scope="module")
def eager_single(tmp_path_factory) -> tuple[Path, Path, list]:
    """A tiny VAE, and one eager process x batch 8 of DALL-E on it (reversible layers): the reference."""
    base = tmp_path_factory.mktemp("compiled")
    vae, single = base / "vae", base / "single"
    run_cmd([sys.executable, ROOT / "train_vae.py", "--output", vae, "--max_steps", "2", *TINY_VAE.split()])
    common = ["--vae_path", vae, "--max_steps", "4", "--sample_every", "3", "--reversible", *DALLE_FLAGS]
    run_cmd([sys.executable, ROOT / "train_dalle.py", "--output", single, "--batch_size", "8", *common])
    return vae, single, common


ENGINES = {  # name -> (launcher, flags)
    "ddp": ("torchrun", []),
    "deepspeed": ("deepspeed", ["--deepspeed", "--zero_stage", "2"]),
    "horovod": ("horovodrun", []),
}


@pytest.mark.slow
@pytest.mark.parametrize("engine", list(ENGINES))
def test_train_dalle_compiled_on_two_ranks_equals_eager_single_process(tmp_path, eager_single, engine):
    """2 ranks x batch 4 with --compile (reversible layers) = one eager process x batch 8, under DDP,
    DeepSpeed (compiled after its engine wrapped the model) and Horovod."""
    launcher, flags = ENGINES[engine]
    if launcher == "deepspeed":
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (make install-dev installs it)")
    if launcher == "horovodrun":
        pytest.importorskip("horovod.torch", reason="Horovod is not installed (make install-dev builds it)")
    _, single, common = eager_single
    out = tmp_path / engine
    proc = run_cmd(
        launch_2_ranks(
            launcher, "train_dalle.py", "--output", out, "--batch_size", "4", "--compile", *common, *flags
        ),
        timeout=400,
        **SAME_RANDOM,
    )
    assert "weights identical on all 2 ranks: yes" in proc.stdout
    assert "--compile: 6 regions compiled" in proc.stdout
    assert re.search(r"--compile: [1-9]\d* graphs compiled in", proc.stdout), proc.stdout
    assert (out / "samples").is_dir()
    assert_same_weights(single, out)
