"""scripts/demo_dalle2.sh runs the prior and the autoencoder side by side: a failure of either must end
the demo with a non-zero exit, show the prior's log, and leave no trainer running.

The trainers themselves are tested elsewhere; here a stand-in interpreter plays them (it is given as the
script's PYTHON argument), so that the orchestration's failure paths run in a second, not a demo's 18 minutes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# argv[1] is the trainer script; each stage's behaviour comes from the environment
STAND_IN = """\
import os, sys, time
from pathlib import Path
stage = sys.argv[1].removesuffix(".py")
run = Path(os.environ["DEMO_MARKS"])
(run / f"{stage}.started").write_text(str(os.getpid()))
assert os.environ.get("OMP_NUM_THREADS") == ("1" if stage in ("train_prior", "train_autoencoder") else None)
how = os.environ.get(f"DEMO_{stage.upper()}", "ok")
if how == "fail":
    print(f"error: {stage} stand-in failed on purpose", file=sys.stderr)
    sys.exit(3)
if how == "fail_after_prior_started":
    while not (run / "train_prior.started").exists():
        time.sleep(0.05)
    sys.exit(4)
if how == "hang":
    time.sleep(120)
print(f"{stage} done:", *sys.argv[2:])
"""


def _demo_command(tmp_path: Path, shapes: str = "one", **stages: str) -> tuple[list[str], dict[str, str]]:
    stand_in = tmp_path / "python"
    stand_in.write_text(f"#!{sys.executable}\n{STAND_IN}")
    stand_in.chmod(0o755)
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update({"DEMO_MARKS": str(marks), "SHAPES": shapes})
    env.update({f"DEMO_{stage.upper()}": how for stage, how in stages.items()})
    return ["bash", "scripts/demo_dalle2.sh", str(stand_in), str(tmp_path / "run")], env


def _demo(tmp_path: Path, shapes: str = "one", **stages: str) -> subprocess.CompletedProcess:
    command, env = _demo_command(tmp_path, shapes, **stages)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def _gone(pid: int, within: float = 5.0) -> bool:
    """Whether ``pid`` ended (a zombie not yet reaped by init counts: it runs nothing)."""
    deadline = time.monotonic() + within
    stat = Path(f"/proc/{pid}/stat")
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.05)
    return False


def test_a_failing_prior_fails_the_demo_with_its_log_and_stops_before_the_decoder(tmp_path):
    done = _demo(tmp_path, train_prior="fail")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "train_prior stand-in failed on purpose" in done.stderr  # the prior's log, shown
    assert "train_prior.py failed" in done.stderr
    assert "train_autoencoder done" in done.stdout  # its sibling ran to its end
    assert not (tmp_path / "marks" / "train_decoder.started").exists()


def test_a_failing_autoencoder_stops_the_prior_beside_it(tmp_path):
    done = _demo(tmp_path, train_prior="hang", train_autoencoder="fail_after_prior_started")
    assert done.returncode == 4, done.stdout + done.stderr
    prior = int((tmp_path / "marks" / "train_prior.started").read_text())
    assert _gone(prior), "the prior was left running after the demo failed"
    assert not (tmp_path / "marks" / "train_decoder.started").exists()


def test_ctrl_c_during_the_autoencoder_stops_the_prior_too(tmp_path):
    """A terminal's Ctrl-C reaches the whole foreground group; bash leaves its background prior deaf to it,
    so only the script's trap can stop the prior."""
    command, env = _demo_command(tmp_path, train_prior="hang", train_autoencoder="hang")
    # SIGINT as a terminal gives it, whatever this process inherited (an ignored SIGINT survives exec: a
    # test run started in the background of a non-interactive shell would make every stand-in deaf to it)
    demo = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    marks = tmp_path / "marks"
    deadline = time.monotonic() + 30
    while not all((marks / f"{s}.started").exists() for s in ("train_prior", "train_autoencoder")):
        assert time.monotonic() < deadline and demo.poll() is None, "the two stages never started"
        time.sleep(0.05)
    time.sleep(0.5)  # both stand-ins asleep, past their start-up
    os.killpg(demo.pid, signal.SIGINT)
    assert demo.wait(timeout=30) == 130
    assert _gone(int((marks / "train_prior.started").read_text())), "Ctrl-C left the prior running"
    assert not (marks / "train_decoder.started").exists()


@pytest.mark.parametrize("shapes", ["one", "two"])
def test_the_stages_run_in_order_the_prior_and_autoencoder_side_by_side_on_one_thread_each(tmp_path, shapes):
    done = _demo(tmp_path, shapes)  # the stand-in fails any stage started with the wrong thread count
    assert done.returncode == 0, done.stdout + done.stderr
    marks = tmp_path / "marks"
    for stage in ("train_clip", "train_prior", "train_autoencoder", "train_decoder", "generate"):
        assert (marks / f"{stage}.started").exists(), (stage, done.stdout + done.stderr)
    out = done.stdout
    assert out.index("train_clip done") < out.index("== 2/5") < out.index("train_autoencoder done")
    assert out.index("train_autoencoder done") < out.index("train_prior done") < out.index("== 4/5")
    prior_line = next(line for line in out.splitlines() if line.startswith("train_prior done"))
    assert f"--shapes {shapes}" in prior_line and "--clip_path" in prior_line
