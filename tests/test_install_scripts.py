"""Engine install scripts: valid shell, idempotent, runnable as `sh install_deepspeed.sh` (DALLE-pytorch's
README form; the design card keeps install_deepspeed.sh and install_apex.sh at the top level), and
install_apex.sh's plain word that native autocast replaced apex."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("install_*.sh"), *(ROOT / "scripts").glob("install_*.sh")])
SCRIPT_OF = {p.name: p for p in SCRIPTS}


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
        ["bash", str(SCRIPT_OF[script]), sys.executable], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "already installed" in result.stdout, result.stdout + result.stderr


def test_the_seed_runs_them_with_sh_from_the_top_level():
    """`sh install_deepspeed.sh` under dash (no pipefail) re-runs itself under bash and finds DeepSpeed."""
    assert (ROOT / "install_deepspeed.sh").is_file() and (ROOT / "install_apex.sh").is_file()
    dash = shutil.which("dash") or shutil.which("sh")
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (make install-dev installs it)")
    result = subprocess.run(
        [dash, "install_deepspeed.sh", sys.executable], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "already installed" in result.stdout, result.stdout + result.stderr


def test_apex_says_native_autocast_replaced_it_and_checks_the_environment():
    result = subprocess.run(
        ["sh", str(ROOT / "install_apex.sh"), sys.executable], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "apex is not needed" in result.stdout and "torch.autocast" in result.stdout
    import torch

    from dalle_dist.devices import cpu_computes_bf16

    expected = "fp16 autocast with loss scaling" if torch.cuda.is_available() else "bf16 autocast on the CPU"
    if not torch.cuda.is_available() and not cpu_computes_bf16():
        expected = "fp32, as this CPU has no bf16 arithmetic"
    assert f"--amp on this machine: {expected}" in result.stdout
    # a Python without torch: the environment check fails in one line
    result = subprocess.run(
        ["sh", str(ROOT / "install_apex.sh"), "/bin/false"], capture_output=True, text=True
    )
    assert result.returncode == 1 and "has no torch yet" in result.stderr
