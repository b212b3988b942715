"""Shared small models, tiny script settings and the command runner of the script-level tests."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dalle_dist import DALLE, DiscreteVAE


def small_vae(image_size: int = 16, num_layers: int = 2, num_tokens: int = 32) -> DiscreteVAE:
    torch.manual_seed(0)
    return DiscreteVAE(
        image_size=image_size, num_layers=num_layers, num_tokens=num_tokens, codebook_dim=16, hidden_dim=8
    )


def small_dalle(vae: DiscreteVAE | None = None, **overrides) -> DALLE:
    torch.manual_seed(0)
    kwargs = dict(
        dim=32, vae=vae or small_vae(), num_text_tokens=50, text_seq_len=6, depth=2, heads=2, dim_head=16
    )
    kwargs.update(overrides)
    return DALLE(**kwargs)


@pytest.fixture
def vae() -> DiscreteVAE:
    return small_vae()


ROOT = Path(__file__).resolve().parents[1]
# the smallest settings the scripts accept: a 16 px VAE with a 4 x 4 token grid, a 2-layer DALL-E
TINY_VAE = "--num_tokens 32 --num_layers 2 --hidden_dim 16 --emb_dim 16 --num_resnet_blocks 0 --batch_size 8 "
TINY_VAE += "--dataset_size 64 --image_size 16"
TINY_DALLE = "--dim 32 --depth 2 --heads 2 --dim_head 16 --text_seq_len 24 --dataset_size 64 "
TINY_DALLE += "--attn_types full,axial_row --bpe_vocab_size 300"


BIN = Path(sys.executable).parent
# one thread per process: launched ranks would otherwise fight over the 2 cores; the launchers on PATH;
# Python's fault handler, so that a hung command can be made to print where every process stood
BASE_ENV = {
    "OMP_NUM_THREADS": "1",
    "DS_ACCELERATOR": "cpu",
    "PATH": f"{BIN}:{os.environ['PATH']}",
    "PYTHONFAULTHANDLER": "1",
}


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _signal_all(pid: int, descendants: list, sig: int) -> None:
    """``sig`` to ``pid``'s process group and to each of ``descendants`` (wherever they went since)."""
    import psutil

    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    for child in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(sig)


def run_cmd(
    cmd: list,
    expect: int | None = 0,
    timeout: float = 240,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    **extra: str,
) -> subprocess.CompletedProcess:
    """Run ``cmd`` (from the repository root unless ``cwd``) in its own process group and check its exit
    status.

    On a timeout every process of the group, and every descendant in a session of its own (torchrun starts
    each rank in one), gets SIGABRT first (the fault handler prints each one's Python stack: where it
    hung), then all are killed (so nothing lingers to hold a port, a core or the output pipes) and the test
    fails with what the command printed.
    """
    full_env = {**os.environ, **BASE_ENV, **(env or {}), **extra}
    proc = subprocess.Popen(
        [str(c) for c in cmd], cwd=cwd, env=full_env, text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        everyone = _descendants(proc.pid)  # listed now: once the launcher dies they belong to init
        _signal_all(proc.pid, everyone, signal.SIGABRT)
        out = err = ""
        with contextlib.suppress(subprocess.TimeoutExpired):
            out, err = proc.communicate(timeout=10)
        _signal_all(proc.pid, everyone, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            out, err = proc.communicate(timeout=30)
        pytest.fail(f"timed out after {timeout} s: {cmd}\nstdout:\n{out[-6000:]}\nstderr:\n{err[-12000:]}")
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if expect is not None:
        assert done.returncode == expect, f"exit {done.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    return done


def run_weights(run_dir: Path, which: str = "final") -> dict[str, torch.Tensor]:
    """A run's portable weights: ``final/`` or one checkpoint (``step-XXXXXXXX``)."""
    from safetensors.torch import load_file

    folder = run_dir / which if which == "final" else run_dir / "checkpoints" / which
    return load_file(folder / "model.safetensors")


def assert_same_weights(a: dict, b: dict, atol: float = 1e-5) -> None:
    """Same keys, every tensor equal within ``atol`` (and 1e-5 relative)."""
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-5, msg=key)


def free_port() -> int:
    """A TCP port nobody listens on now (for --master_port): fixed ports collide with lingering jobs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_2_ranks(launcher: str, script: str | Path, *args) -> list[str]:
    """``script args`` started as 2 ranks on this machine by ``launcher`` (torchrun, deepspeed or
    horovodrun), each launch on a free port."""
    script_args = [str(ROOT / script), *map(str, args)]
    if launcher == "torchrun":
        port = f"--master_port={free_port()}"
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", port, *script_args]
    if launcher == "deepspeed":
        return [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), *script_args]
    assert launcher == "horovodrun", launcher
    return [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, *script_args]


def train_tiny_vae(out: Path) -> Path:
    """A two-step train_vae.py run with TINY_VAE in ``out`` (what DALL-E script tests train on)."""
    cmd = [
        sys.executable,
        str(ROOT / "train_vae.py"),
        "--output",
        str(out),
        "--max_steps",
        "2",
        *TINY_VAE.split(),
    ]
    run_cmd(cmd)
    return out


def noise_folder(folder: Path, count: int, side: int = 16) -> Path:
    """``count`` random-noise PNGs of ``side`` px, each with a .txt of two captions: a captioned folder."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"picture number {i}\nanother caption {i % 3}\n")
    return folder
