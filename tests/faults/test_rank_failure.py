"""A rank killed mid-run (kill -9) or raising ends the whole job with an error, under each launcher, within
60 s; a raising rank is named in the output."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import BASE_ENV, ROOT, TINY_DALLE, launch_2_ranks, run_cmd, train_tiny_vae

ENV = {**os.environ, **BASE_ENV}


def launch(launcher: str, *args) -> list[str]:
    engine = ["--deepspeed"] if launcher == "deepspeed" else []
    return launch_2_ranks(launcher, "train_dalle.py", *args, *engine)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    return train_tiny_vae(tmp_path_factory.mktemp("fail") / "vae")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed", "horovodrun"])
def test_killed_rank_ends_the_job(tmp_path, vae_run, launcher):
    engine = {"torchrun": "torch", "deepspeed": "deepspeed", "horovodrun": "horovod"}[launcher]
    if importlib.util.find_spec(engine) is None:
        pytest.skip(f"{engine} is not installed (make install-dev installs it)")
    flags = [
        "--vae_path",
        vae_run,
        "--output",
        tmp_path / "run",
        "--batch_size",
        "4",
        "--max_steps",
        "100000",
        "--epochs",
        "1000",
    ]
    proc = subprocess.Popen(
        launch(launcher, *flags, *TINY_DALLE.split(), "--log_every", "1", "--sample_every", "100000"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
        start_new_session=True,
    )
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "step 5/" in line:
                break
        else:
            pytest.fail("the run ended before step 5:\n" + "".join(seen[-30:]))
        ranks = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if "-m" not in p.cmdline() and any(part.endswith("train_dalle.py") for part in p.cmdline())
        ]
        assert len(ranks) == 2, [p.cmdline() for p in ranks]
        start = time.monotonic()
        max(ranks, key=lambda p: p.pid).send_signal(signal.SIGKILL)
        tail = proc.stdout.read()
        code = proc.wait(timeout=90)
        elapsed = time.monotonic() - start
        assert code != 0, tail[-2000:]
        assert elapsed < 60, elapsed
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks), (
            "no rank left behind"
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed", "horovodrun"])
def test_raising_rank_ends_the_job_and_is_named(tmp_path, vae_run, launcher):
    """Rank 1 raises at step 3 (injected fault): the job ends non-zero within 60 s and the output names
    the rank that failed and why."""
    engine = {"torchrun": "torch", "deepspeed": "deepspeed", "horovodrun": "horovod"}[launcher]
    if importlib.util.find_spec(engine) is None:
        pytest.skip(f"{engine} is not installed (make install-dev installs it)")
    flags = ["--vae_path", vae_run, "--output", tmp_path / "run", "--batch_size", "4", "--max_steps", "50"]
    cmd = launch(launcher, *flags, *TINY_DALLE.split(), "--log_every", "1", "--sample_every", "1000")
    start = time.monotonic()
    proc = run_cmd(cmd, expect=None, DALLE_DIST_FAULTS="raise@3:1")
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-2000:]
    assert "(rank 1 of 2): this rank failed (RuntimeError: injected fault at step 3)" in output, output[
        -3000:
    ]
    assert elapsed < 60, elapsed  # launch included
    assert not (tmp_path / "run" / "final").exists()
