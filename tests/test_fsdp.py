"""FSDP2 (``--distributed_backend fsdp`` under torchrun) with real processes: equal to one process, sharded
checkpoints that resume on the same and on another world size, and a checkpoint index that cannot run code."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_DALLE, TINY_VAE, assert_same_weights, free_port, run_cmd, run_weights

from dalle_dist.distributed.fsdp import _MetadataUnpickler

DALLE_FLAGS = [*TINY_DALLE.split(), "--log_every", "1", "--sample_every", "5", "--save_every_n_steps", "3"]


def torchrun(nproc: int, *args) -> list:
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}", ROOT / "train_dalle.py", "--distributed_backend", "fsdp", *args,
    ]  # fmt: skip


weights, assert_same = run_weights, assert_same_weights


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "vae"
    run_cmd([sys.executable, ROOT / "train_vae.py", "--output", out, "--max_steps", "2", *TINY_VAE.split()])
    return out


def flags(vae_run: Path, out: Path, batch: int, *extra) -> list:
    return [
        "--vae_path",
        vae_run,
        "--output",
        out,
        "--batch_size",
        batch,
        "--max_steps",
        "6",
        *DALLE_FLAGS,
        *extra,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--compile"], ["--reversible"], ["--activation_checkpointing"]], ids=str)
def test_fsdp_two_ranks_equal_one_process(tmp_path, vae_run, extra):
    """2 ranks x batch 4, every transformer branch and the root sharded, = 1 process x batch 8 (fp32): with
    the sharded branches compiled, reversible, or checkpointed."""
    single, sharded = tmp_path / "single", tmp_path / "fsdp"
    run_cmd([sys.executable, ROOT / "train_dalle.py", *flags(vae_run, single, 8, *extra)])
    proc = run_cmd(torchrun(2, *flags(vae_run, sharded, 4, *extra)), timeout=300)
    assert "batch 4 x 2 ranks" in proc.stdout
    assert (sharded / "samples").is_dir(), "the root drew samples from its gathered copy"
    engine = sharded / "checkpoints" / "step-00000003" / "engine"
    assert (engine / ".metadata").is_file() and len(list(engine.glob("*.distcp"))) == 2, "each rank wrote"
    assert_same(weights(single), weights(sharded))
    out = tmp_path / "gen"
    run_cmd([sys.executable, ROOT / "generate.py", "--dalle_path", sharded, "--text", "red circle",
             "--num_images", "2", "--outputs_dir", out])  # fmt: skip
    assert (out / "red_circle" / "grid.png").is_file(), "generate.py reads an fsdp run's final/ unchanged"


@pytest.mark.slow
def test_fsdp_resume_on_the_same_and_other_world_sizes(tmp_path, vae_run):
    """Stopped at step 3 and resumed: on 2 ranks, on 1 rank (2 -> 1) reading the same global batches, and a
    1-rank run resumed on 2 ranks (1 -> 2): each equals the uninterrupted 2-rank run (DCP reshards)."""
    straight, split, one, grown = (tmp_path / name for name in ("straight", "split", "one", "grown"))
    run_cmd(torchrun(2, *flags(vae_run, straight, 4)), timeout=300)
    run_cmd(torchrun(2, *flags(vae_run, split, 4, "--max_steps", "3")), timeout=300)
    subprocess.run(["cp", "-r", str(split), str(one)], check=True)
    proc = run_cmd(torchrun(2, *flags(vae_run, split, 4, "--resume")), timeout=300)
    assert f"resuming {split} at step 3" in proc.stdout
    assert_same(weights(straight), weights(split), atol=1e-6)

    proc = run_cmd(torchrun(1, *flags(vae_run, one, 8, "--resume")), timeout=300)
    assert "FSDP checkpoint on 1 rank: its shards were redistributed" in proc.stdout, proc.stdout
    assert_same(weights(straight), weights(one), atol=1e-6)

    run_cmd(torchrun(1, *flags(vae_run, grown, 8, "--max_steps", "3")), timeout=300)
    proc = run_cmd(torchrun(2, *flags(vae_run, grown, 4, "--resume")), timeout=300)
    assert "FSDP checkpoint on 2 ranks: its shards were redistributed" in proc.stdout, proc.stdout
    assert_same(weights(straight), weights(grown), atol=1e-6)

    # resuming without the engine that wrote the state: one line naming the command
    plain = run_cmd(
        [sys.executable, ROOT / "train_dalle.py", *flags(vae_run, one, 8, "--resume", "--max_steps", "9")],
        expect=2,
    )
    assert "was written by the fsdp backend (sharded): resume it with `torchrun" in plain.stderr
    assert "Traceback" not in plain.stderr


def test_fsdp_needs_torchrun(tmp_path, vae_run):
    cmd = [sys.executable, ROOT / "train_dalle.py", *flags(vae_run, tmp_path / "r", 4)]
    proc = run_cmd([*cmd, "--distributed_backend", "fsdp"], expect=2)
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "--distributed_backend fsdp needs a launcher: run `torchrun --nproc_per_node N train_dalle.py "
            "--distributed_backend fsdp ...`"
        )
    ), proc.stderr


class _Payload:
    def __reduce__(self):
        return (print, ("ran code from a checkpoint",))


def test_checkpoint_index_admits_only_its_own_classes():
    """DCP's ``.metadata`` is a pickle: its own dataclasses, sizes and dtypes load, anything else refused."""
    from torch.distributed.checkpoint.metadata import Metadata, TensorProperties, TensorStorageMetadata

    index = Metadata(
        {"w": TensorStorageMetadata(TensorProperties(dtype=torch.float32), torch.Size([2, 3]), [])}
    )
    loaded = _MetadataUnpickler(io.BytesIO(pickle.dumps(index))).load()
    assert loaded.state_dict_metadata["w"].size == torch.Size([2, 3])
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.print is not part of a checkpoint index"):
        _MetadataUnpickler(io.BytesIO(pickle.dumps(_Payload()))).load()


@pytest.mark.slow
def test_vae_under_fsdp_equals_ddp_and_refusals(tmp_path):
    """train_vae.py shards too (encoder, decoder, root) and equals DDP on the same 2 ranks (each rank draws
    its own Gumbel noise, so one process differs). --cpu_offload on a CPU is refused in one line. (The
    DALL-E 2 trainers under FSDP: tests/test_dalle2_training.py, tests/test_latent_decoder_training.py.)"""
    vae = [*TINY_VAE.split(), "--max_steps", "4", "--save_every_n_steps", "2", "--sample_every", "3"]
    runs = {}
    for backend in ("ddp", "fsdp"):
        runs[backend] = tmp_path / backend
        launch = torchrun(2, "--output", runs[backend], *vae, "--distributed_backend", backend)
        launch[launch.index(ROOT / "train_dalle.py")] = ROOT / "train_vae.py"
        proc = run_cmd(launch, timeout=300)
        assert "weights identical on all 2 ranks: yes" in proc.stdout
    assert_same(weights(runs["ddp"]), weights(runs["fsdp"]))
    launch = torchrun(2, "--output", tmp_path / "offload", "--vae_path", runs["ddp"], "--cpu_offload")
    proc = run_cmd(launch, expect=None, timeout=120)
    assert proc.returncode != 0 and "on the CPU they are there already" in proc.stderr, proc.stderr[-2000:]


def test_the_root_template_holds_no_weights_and_builds_an_equal_copy():
    """The root rank keeps a meta-device blueprint (no memory for weights) and builds a plain copy from the
    gathered weights only to sample: it computes what the model computes, non-persistent buffers included."""
    from conftest import small_dalle

    from dalle_dist.distributed.backend import Template

    model = small_dalle().eval()
    non_persistent = {n for n, _ in model.named_buffers()} - set(model.state_dict())
    assert non_persistent, "the test model should have a buffer no state dict carries"
    template = Template(model)
    assert all(p.is_meta for p in template.skeleton.parameters())
    copy = template.build({k: v.clone() for k, v in model.state_dict().items()}, torch.device("cpu"))
    assert not copy.training and not any(p.is_meta for p in copy.parameters())
    text = torch.randint(1, model.text_vocab_size, (2, model.text_seq_len))
    image = torch.randint(0, model.num_image_tokens, (2, model.image_seq_len))
    with torch.no_grad():
        torch.testing.assert_close(copy(text, image, return_loss=True), model(text, image, return_loss=True))
