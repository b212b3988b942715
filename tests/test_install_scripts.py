"""Engine install scripts: valid shell, idempotent, and apex's honest refusal on a machine without CUDA."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("install_*.sh"))


def test_scripts_exist_and_parse():
    assert {p.name for p in SCRIPTS} >= {"install_horovod.sh", "install_deepspeed.sh", "install_apex.sh"}
    for script in SCRIPTS:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


@pytest.mark.parametrize(
    ("script", "module"), [("install_deepspeed.sh", "deepspeed"), ("install_horovod.sh", "horovod")]
)
def test_installed_engine_is_left_alone(script, module):
    """make install-dev runs these on every install: with the engine present they must return at once."""
    pytest.importorskip(module, reason=f"{module} is not installed (make install-dev installs it)")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / script), sys.executable], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "already installed" in result.stdout, result.stdout + result.stderr


def test_apex_explains_why_it_is_not_installed(tmp_path):
    env = {**os.environ, "PATH": f"{tmp_path}:/bin"}  # a PATH without nvcc (this machine has one elsewhere)
    assert shutil.which("nvcc", path=env["PATH"]) is None
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install_apex.sh"), sys.executable],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1
    assert "no CUDA toolkit (nvcc)" in result.stderr and "torch.autocast" in result.stderr
