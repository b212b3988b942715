"""Guarantee 5 of [6/8]: files from a stranger are data. A checkpoint file crafted to run code when
unpickled -- with its checksum forged to match, as an attacker would -- is refused by every script
(exit 2, one line) and its payload never runs; weights go through safetensors, the rest through
``weights_only`` loading; config and tokenizer files are parsed, never evaluated."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_DALLE, run_cmd, train_tiny_vae

from dalle_dist.checkpoint import meta_digest

FLAGS = [*TINY_DALLE.split(), "--batch_size", "8", "--sample_every", "1000", "--save_every_n_steps", "2"]


class Payload:
    """Unpickling this creates ``marker``: the tests show loading never gets that far."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def forge(checkpoint: Path, name: str, data: bytes) -> None:
    """Replace ``checkpoint/name`` and forge its checksum in meta.json: only the loader stands in the way."""
    (checkpoint / name).write_bytes(data)
    meta = json.loads((checkpoint / "meta.json").read_text())
    meta["checksums"][name] = hashlib.sha256(data).hexdigest()
    meta["meta_sha256"] = meta_digest(meta)
    (checkpoint / "meta.json").write_text(json.dumps(meta))


def refused(cmd: list, marker: Path, *needles: str) -> None:
    proc = run_cmd(cmd, expect=2)
    line = proc.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line and "Traceback" not in proc.stderr, proc.stderr
    assert all(needle in line for needle in needles), line
    assert not marker.exists(), "the payload ran"


@pytest.fixture(scope="module")
def vae(tmp_path_factory) -> Path:
    return train_tiny_vae(tmp_path_factory.mktemp("hostile") / "vae")


def dalle_run(vae: Path, out: Path, *extra: str) -> list:
    cmd = [sys.executable, ROOT / "train_dalle.py", "--vae_path", vae, "--output", out, *FLAGS, *extra]
    run_cmd([*cmd, "--max_steps", "2"])
    return [*cmd, "--max_steps", "4", "--resume"]


def test_payload_is_live(tmp_path):
    """The payload used below really runs code when unpickled the ordinary way."""
    pickle.loads(pickle.dumps(Payload(tmp_path / "ran"))).close()
    assert (tmp_path / "ran").exists()


def test_training_state_with_code_is_refused_on_resume(tmp_path, vae):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    resume = dalle_run(vae, out)
    state = torch.load(out / "checkpoints" / "step-00000002" / "training_state.pt", weights_only=True)
    state["rng"]["python"] = Payload(marker)
    path = tmp_path / "state.pt"
    torch.save(state, path)
    forge(out / "checkpoints" / "step-00000002", "training_state.pt", path.read_bytes())
    refused(resume, marker, "refused to load", "training_state.pt")


def test_deepspeed_engine_file_with_code_is_refused_on_resume(tmp_path, vae):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (make install-dev installs it)")
    out, marker = tmp_path / "run", tmp_path / "pwned"
    resume = dalle_run(vae, out, "--deepspeed")
    checkpoint = out / "checkpoints" / "step-00000002"
    engine_files = sorted(p.relative_to(checkpoint).as_posix() for p in (checkpoint / "engine").rglob("*.pt"))
    assert engine_files, "DeepSpeed wrote no engine files"
    path = tmp_path / "engine.pt"
    torch.save({"module": Payload(marker)}, path)
    forge(checkpoint, engine_files[0], path.read_bytes())
    refused(resume, marker, "refused to load the DeepSpeed state")


def test_weights_that_are_a_pickle_are_refused(tmp_path, vae):
    marker, copy = tmp_path / "pwned", tmp_path / "vae"
    shutil.copytree(vae, copy)
    forge(copy / "final", "model.safetensors", pickle.dumps(Payload(marker)))
    cmd = [sys.executable, ROOT / "train_dalle.py", "--vae_path", copy, "--output", tmp_path / "o", *FLAGS]
    refused(cmd, marker, "model.safetensors", "not a valid safetensors file")


def test_tokenizer_and_config_files_are_parsed_not_run(tmp_path, vae):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    dalle_run(vae, out)
    forge(out / "final", "tokenizer.json", pickle.dumps(Payload(marker)))
    generate = [
        sys.executable,
        ROOT / "generate.py",
        "--dalle_path",
        out,
        "--text",
        "a",
        "--outputs_dir",
        tmp_path,
    ]
    refused(generate, marker, "tokenizer.json")
    config = tmp_path / "config.yaml"
    config.write_text(f"batch_size: !!python/object/apply:os.system ['touch {marker}']\n")
    train = [sys.executable, ROOT / "train_vae.py", "--config", config, "--output", tmp_path / "v"]
    refused(train, marker, "--config", "not valid YAML")
