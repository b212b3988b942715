"""Classes of bad input, each closed by one mechanism rather than case by case (issue [2/6]): every float
flag of every command refuses NaN / Inf, and every flag that names a folder (or file) to write refuses a
path it cannot become. The flags are found by what their types do, so a flag added later is covered too.
"""

from __future__ import annotations

import argparse
import sys

import pytest
import torch
from conftest import ROOT, run_cmd

from dalle_dist import convert, encode_tokens, generation, plot
from dalle_dist.cli import output_file, output_folder
from dalle_dist.evaluation import evaluate, score_outputs
from dalle_dist.training import clip_job, dalle_job, vae_job

PARSERS = {
    "train_dalle.py": dalle_job.build_parser,
    "train_vae.py": vae_job.build_parser,
    "train_clip.py": clip_job.build_parser,
    "generate.py": generation.build_parser,
    "evaluate.py": evaluate.build_parser,
    "encode_tokens": encode_tokens.build_parser,
    "convert": convert.build_parser,
    "plot": plot.build_parser,
    "score_outputs": score_outputs.build_parser,
}


def converter(parser: argparse.ArgumentParser, action: argparse.Action):
    return parser._registry_get("type", action.type, action.type)


def float_flags() -> list[tuple[str, str]]:
    """(script, flag) of every option whose type turns "0.5" into a float."""
    found = []
    for script, build in PARSERS.items():
        parser = build()
        for action in parser._actions:
            convert_ = converter(parser, action)
            if not action.option_strings or convert_ is None:
                continue
            try:
                is_float = isinstance(convert_("0.5"), float)
            except (argparse.ArgumentTypeError, ValueError, TypeError):
                is_float = False
            if is_float:
                found.append((script, action.option_strings[0]))
    return found


FLOAT_FLAGS = float_flags()


def test_the_float_flags_are_found():
    flags = {f"{script} {flag}" for script, flag in FLOAT_FLAGS}
    for expected in (
        "generate.py --cond_scale",
        "train_dalle.py --learning_rate",
        "train_vae.py --kl_loss_weight",
    ):
        assert expected in flags
    assert len(FLOAT_FLAGS) >= 15


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
@pytest.mark.parametrize(("script", "flag"), FLOAT_FLAGS, ids=[f"{s}{f}" for s, f in FLOAT_FLAGS])
def test_every_float_flag_refuses_non_finite_values(capsys, script, flag, value):
    with pytest.raises(SystemExit) as exit_:
        PARSERS[script]().parse([f"{flag}={value}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: argument {flag}") and "\n" not in err, err
    assert "finite" in err or "must be" in err, err


def test_a_config_file_cannot_smuggle_nan(tmp_path, capsys):
    from dalle_dist.errors import UserError

    config = tmp_path / "c.yaml"
    config.write_text("cond_scale: .nan\n")  # YAML's own NaN, not the text "nan"
    with pytest.raises(UserError, match="cond_scale: must be a finite number"):
        generation.build_parser().parse(["--config", str(config), "--dalle_path", "x", "--text", "a"])


def test_generate_with_nan_guidance_stops_before_generating(tmp_path):
    proc = run_cmd(
        [sys.executable, ROOT / "generate.py", "--dalle_path", tmp_path, "--text", "a", "--cond_scale", "nan",
         "--outputs_dir", tmp_path / "out"],
        expect=2,
    )  # fmt: skip
    assert proc.stderr.strip() == (
        "error: argument --cond_scale/--cf_guidance_scale: must be a finite number, got nan; "
        "see generate.py --help"
    )
    assert not (tmp_path / "out").exists()


def output_flags() -> list[tuple[str, str, object]]:
    found = []
    for script, build in PARSERS.items():
        for action in build()._actions:
            if action.type in (output_folder, output_file):
                found.append(
                    (script, action.option_strings[0] if action.option_strings else action.dest, action.type)
                )
    return found


OUTPUT_FLAGS = output_flags()
WRITTEN = {"output", "outputs_dir", "out", "json"}  # the flag names this project gives to written paths


def test_every_written_path_flag_is_checked():
    for script, build in PARSERS.items():
        for action in build()._actions:
            if action.option_strings and action.dest in WRITTEN:  # (score_outputs' positional is read)
                assert action.type in (output_folder, output_file), f"{script} --{action.dest}"
    assert {f"{s} {f}" for s, f, _ in OUTPUT_FLAGS} >= {
        "generate.py --outputs_dir",
        "train_dalle.py --output",
    }


@pytest.mark.parametrize(
    ("script", "flag", "kind"), OUTPUT_FLAGS, ids=[f"{s}{f}" for s, f, _ in OUTPUT_FLAGS]
)
def test_output_paths_that_cannot_be_written_are_refused(tmp_path, capsys, script, flag, kind):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    bad = [a_file / "inside"]  # a path through a file: neither a folder nor a file can be made there
    bad.append(a_file if kind is output_folder else tmp_path)  # a file for a folder, a folder for a file
    for path in bad:
        with pytest.raises(SystemExit) as exit_:
            PARSERS[script]().parse([f"{flag}={path}"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: argument {flag}") and "\n" not in err, err
        assert str(path) in err or str(path.parent) in err, err


def test_an_output_folder_may_exist_or_be_new(tmp_path):
    assert output_folder(str(tmp_path)) == tmp_path
    assert output_folder(str(tmp_path / "new" / "deeper")) == tmp_path / "new" / "deeper"
    assert output_file(str(tmp_path / "scores.json")) == tmp_path / "scores.json"


# --- a checkpoint whose description disagrees with its weights -------------------------------------------


def tiny_dalle_checkpoint(folder):
    from dalle_dist.checkpoint import describe_vae, save_checkpoint
    from dalle_dist.models import DALLE, DiscreteVAE
    from dalle_dist.text.byte import ByteTokenizer

    vae = DiscreteVAE(image_size=16, num_tokens=32, codebook_dim=16, num_layers=2, hidden_dim=16)
    tokenizer = ByteTokenizer()
    dalle = DALLE(vae=vae, num_text_tokens=tokenizer.vocab_size, text_seq_len=8, dim=32, depth=1, heads=2,
                  dim_head=16)  # fmt: skip
    meta = {"model": dalle.config(), "vae": describe_vae(vae)}
    return save_checkpoint(folder, kind="dalle", meta=meta, module=dalle, tokenizer=tokenizer)


def edit_meta(folder, change, reseal: bool) -> None:
    import json

    from dalle_dist.checkpoint import meta_digest

    meta = json.loads((folder / "meta.json").read_text())
    change(meta)
    if reseal:  # a forger who also recomputes the description's digest
        meta["meta_sha256"] = meta_digest(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


def double_dim(meta):
    meta["model"]["dim"] *= 2


def bad_heads(meta):
    meta["model"]["heads"] = 0


def vae_layers(meta):
    meta["vae"]["config"]["num_layers"] = 3


@pytest.mark.parametrize("change", [double_dim, bad_heads, vae_layers])
@pytest.mark.parametrize("reseal", [False, True], ids=["edited", "edited_and_resealed"])
def test_a_checkpoint_whose_description_disagrees_with_its_weights_is_one_line(tmp_path, change, reseal):
    from dalle_dist.checkpoint import load_dalle
    from dalle_dist.errors import UserError

    folder = tiny_dalle_checkpoint(tmp_path / "ck")
    load_dalle(folder)  # as written, it loads
    edit_meta(folder, change, reseal)
    with pytest.raises(UserError) as error:
        load_dalle(folder)
    message = str(error.value)
    assert "\n" not in message and "damaged or was edited" in message, message
    if not reseal:
        assert "meta.json does not match its checksum" in message


def test_generate_on_an_edited_checkpoint_is_one_line(tmp_path):
    folder = tiny_dalle_checkpoint(tmp_path / "ck")
    edit_meta(folder, double_dim, reseal=True)  # past the digest: the shapes catch it
    proc = run_cmd(
        [sys.executable, ROOT / "generate.py", "--dalle_path", folder, "--text", "a", "--outputs_dir",
         tmp_path / "out"],
        expect=2,
    )  # fmt: skip
    err = proc.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in proc.stderr, proc.stderr
    assert "weights do not fit" in err and "shapes" in err and "damaged or was edited" in err, err


# --- two live processes writing one run directory --------------------------------------------------------


HOLDER = """
import sys, time
from pathlib import Path
from dalle_dist.lock import hold
hold(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


def test_a_held_lock_names_its_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    import os
    import signal
    import subprocess

    from dalle_dist.errors import UserError
    from dalle_dist.lock import RunLock

    path = tmp_path / "lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"is in use: pid {holder.pid} on ") as error:
            RunLock(path).acquire()
        assert "\n" not in str(error.value)
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # dies holding it: the kernel drops the flock, the name stays
        holder.wait()
    with RunLock(path) as lock:
        assert lock.held
        assert f"pid {holder.pid}" in lock.describe_takeover()
        assert lock.describe_takeover() is None  # said once
    assert path.read_text() == ""  # released: no holder named
    with RunLock(path) as lock:
        assert lock.describe_takeover() is None  # a lock released properly is not a takeover


def test_a_second_trainer_on_a_live_run_stops_in_one_line_and_resumes_once_it_is_gone(tmp_path):
    import os
    import signal
    import subprocess
    import time

    from conftest import BASE_ENV, TINY_VAE

    run = tmp_path / "run"
    cmd = [sys.executable, ROOT / "train_vae.py", *TINY_VAE.split(), "--output", run]
    first = subprocess.Popen(
        [str(c) for c in [*cmd, "--max_steps", "100000", "--epochs", "100000", "--save_every_n_steps", "1"]],
        cwd=ROOT, env={**os.environ, **BASE_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while not (run / "latest").exists():
            assert first.poll() is None and time.time() < deadline, (
                first.stderr.read() if first.poll() else "slow"
            )
            time.sleep(0.2)
        for extra in (["--resume"], []):  # continuing it, and starting a new run over it
            proc = run_cmd([*cmd, *extra, "--max_steps", "3"], expect=2)
            err = proc.stderr.strip()
            assert err.startswith("error: --output") and "\n" not in err, proc.stderr
            assert f"is in use: pid {first.pid}" in err, err
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    steps = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    done = int(steps[-1].split("-")[1]) + 1
    proc = run_cmd([*cmd, "--resume", "--max_steps", str(done)])
    assert f"took over the lock of pid {first.pid}" in proc.stdout
    assert (run / "final" / "meta.json").is_file()
    assert (run / "lock").read_text() == ""


# --- --resume / --dalle_path with flags the run cannot honour ---------------------------------------------


@pytest.fixture(scope="module")
def dalle_run(tmp_path_factory):
    from conftest import TINY_DALLE, train_tiny_vae

    base = tmp_path_factory.mktemp("resume_flags")
    vae = train_tiny_vae(base / "vae")
    cmd = [sys.executable, ROOT / "train_dalle.py", *TINY_DALLE.split(), "--vae_path", vae,
           "--batch_size", "8", "--sample_every", "100", "--learning_rate", "0.002",
           "--adam_beta2", "0.99"]  # fmt: skip
    run_cmd([*cmd, "--output", base / "dalle", "--max_steps", "2"])
    return base / "dalle"


def one_line(proc) -> str:
    err = proc.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in proc.stderr, proc.stderr
    return err


@pytest.mark.parametrize(
    ("flags", "named", "why"),
    [
        (["--dim", "64", "--depth", "3"], ["--dim 64 (it has 32)", "--depth 3 (it has 2)"], "with the model"),
        (["--attn_types", "full"], ["--attn_types full (it has full,axial_row)"], "with the model"),
        (
            ["--dataset_size", "32", "--seed", "5"],
            ["--dataset_size 32 (it has 64)", "--seed 5"],
            "as it was started",
        ),
        (["--image_size", "32"], ["--image_size 32"], "as it was started"),
        # the optimizer state it resumes keeps the betas it was saved with
        (["--adam_beta2", "0.999"], ["--adam_beta2 0.999 (it has 0.99)"], "as it was started"),
    ],
    ids=["shape", "attention", "data", "image_size", "adam_beta2"],
)
def test_resume_refuses_flags_that_differ_from_the_run(tmp_path, dalle_run, flags, named, why):
    before = sorted(p.name for p in dalle_run.rglob("*"))
    proc = run_cmd([sys.executable, ROOT / "train_dalle.py", "--output", dalle_run, "--resume",
                    "--max_steps", "3", *flags], expect=2)  # fmt: skip
    err = one_line(proc)
    assert f"--resume continues {dalle_run} {why}" in err, err
    for needle in named:
        assert needle in err, err
    assert sorted(p.name for p in dalle_run.rglob("*")) == before  # nothing written


def test_resume_takes_the_runs_flags_and_lets_the_changeable_ones_change(tmp_path, dalle_run):
    import shutil

    import yaml

    run = tmp_path / "copy"
    shutil.copytree(dalle_run, run)
    # the run trained its --max_steps 2: resuming it as it was started has nothing to do, and says so
    proc = run_cmd([sys.executable, ROOT / "train_dalle.py", "--output", run, "--resume"], expect=2)
    assert "has already trained the 2 steps it was started with" in one_line(proc)
    assert "pass a larger --max_steps" in proc.stderr
    # the same model flags repeated are fine; --max_steps and the learning rate may change
    proc = run_cmd([sys.executable, ROOT / "train_dalle.py", "--output", run, "--resume", "--max_steps", "3",
                    "--dim", "32", "--learning_rate", "0.001"])  # fmt: skip
    assert "note: --learning_rate 0.001 replaces the run's 0.002" in proc.stdout
    # nothing repeated: the run's own flags (its learning rate, its data), not the defaults
    proc = run_cmd([sys.executable, ROOT / "train_dalle.py", "--output", run, "--resume", "--max_steps", "4"])
    records = sorted(run.glob("config.resume-*.yaml"))
    recorded = yaml.safe_load(records[-1].read_text())
    assert recorded["learning_rate"] == 0.001 and recorded["dataset_size"] == 64
    assert recorded["attn_types"] == ["full", "axial_row"]
    latest = sorted((run / "checkpoints").glob("step-*"))[-1]
    state = torch.load(latest / "training_state.pt", weights_only=True)
    assert [tuple(g["betas"]) for g in state["engine"]["optimizer"]["param_groups"]] == [(0.9, 0.99)]
    assert "took over" not in proc.stdout  # the refused and finished runs all released the lock


def test_fine_tuning_refuses_model_flags_the_weights_cannot_take(tmp_path, dalle_run):
    proc = run_cmd([sys.executable, ROOT / "train_dalle.py", "--dalle_path", dalle_run,
                    "--output", tmp_path / "ft", "--heads", "4", "--dataset_size", "64", "--max_steps", "1"],
                   expect=2)  # fmt: skip
    err = one_line(proc)
    assert f"--dalle_path {dalle_run} fixes the model" in err and "--heads 4 (it has 2)" in err, err
    assert not (tmp_path / "ft" / "latest").exists()


def test_the_tools_below_the_cli_layer_check_the_same(tmp_path, capsys):
    """train_bpe and make_shards sit below the cli layer (plain argparse): the same classes, one line."""
    from dalle_dist.data.make_shards import main as make_shards
    from dalle_dist.text.train_bpe import main as train_bpe

    captions = tmp_path / "captions.txt"
    captions.write_text("a red square\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (train_bpe, [str(captions), "--out", str(tmp_path)], "is a folder"),
        (train_bpe, [str(captions), "--out", str(a_file / "bpe.json")], "is a file"),
        (make_shards, [str(tmp_path), str(a_file)], "is a file, not a folder"),
        (make_shards, [str(tmp_path), str(tmp_path / "out"), "--maxsize", "nan"], "finite"),
    ]
    for main, argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and words in err, err
