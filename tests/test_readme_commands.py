"""The README cannot rot: every flag its commands use is one the script accepts, the quick-start commands
run (with tiny overrides appended), and its Python examples call the API with arguments it takes."""

from __future__ import annotations

import ast
import functools
import inspect
import re
import shlex
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_cmd

import dalle_dist

README = (ROOT / "README.md").read_text(encoding="utf-8")
SCRIPTS = ("train_vae.py", "train_dalle.py", "generate.py")
CHECKED = (
    *SCRIPTS,
    "train_clip.py",
    "train_prior.py",
    "train_autoencoder.py",
    "train_decoder.py",
    "evaluate.py",
)  # flags checked


def blocks(language: str) -> list[str]:
    return [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", README, re.S) if lang == language]


def commands() -> list[list[str]]:
    """Every command line of the bash blocks (continuations joined, comments dropped), as words."""
    found = []
    for body in blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                found.append(shlex.split(line.replace("[", "").replace("]", "")))
    return found


def script_of(words: list[str]) -> tuple[str, list[str]] | None:
    """``(script or module, its arguments)`` when the command runs one of ours, after any launcher."""
    for i, word in enumerate(words):
        if Path(word).name in CHECKED:
            return Path(word).name, words[i + 1 :]
        if word == "-m" and i + 1 < len(words) and words[i + 1].startswith("dalle_dist."):
            return words[i + 1], words[i + 2 :]
    return None


@functools.cache
def accepted_flags(script: str) -> set[str]:
    cmd = (
        [sys.executable, "-m", script]
        if script.startswith("dalle_dist.")
        else [sys.executable, ROOT / script]
    )
    return set(re.findall(r"(--[a-z][a-z0-9_]*)", run_cmd([*cmd, "--help"]).stdout))


OURS = [found for words in commands() if (found := script_of(words))]


def test_the_readme_has_commands_for_every_script():
    assert {script for script, _ in OURS} >= set(CHECKED)
    assert len(OURS) >= 15


@pytest.mark.parametrize(("script", "args"), OURS, ids=[f"{s} {' '.join(a)[:40]}" for s, a in OURS])
def test_every_readme_flag_exists(script, args):
    flags = {a.split("=")[0] for a in args if a.startswith("--")}
    unknown = flags - accepted_flags(script)
    assert not unknown, f"README uses {sorted(unknown)} with {script}, which does not accept them"


def test_quick_start_commands_run(tmp_path):
    """The three quick-start commands as written, with short runs asked for at the end (last flag wins)."""
    quick = [words for words in commands() if words[:1] == ["python"] and words[1:2] and words[1] in SCRIPTS]
    quick = quick[:3]
    assert [w[1] for w in quick] == list(SCRIPTS), quick
    tiny = {
        "train_vae.py": ["--max_steps", "2", "--batch_size", "4", "--hidden_dim", "16", "--emb_dim", "16"],
        "train_dalle.py": ["--max_steps", "2", "--dataset_size", "32", "--batch_size", "4", "--dim", "32",
                           "--depth", "2"],
        "generate.py": ["--num_images", "2"],
    }  # fmt: skip
    for words in quick:  # run where a user would: relative paths (runs/, outputs/) land in tmp_path
        run_cmd([sys.executable, ROOT / words[1], *words[2:], *tiny[words[1]]], cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["dalle", "vae"]
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["a_blue_square", "a_red_circle"]


def api_calls() -> list[tuple[str, ast.Call]]:
    """Calls of the package's public names (``DALLE(...)``) and of methods on objects made by them."""
    calls = []
    for body in blocks("python"):
        for node in ast.walk(ast.parse(body)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in dalle_dist.__all__
            ):
                calls.append((node.func.id, node))
    return calls


@pytest.mark.parametrize(("name", "call"), api_calls(), ids=[name for name, _ in api_calls()])
def test_readme_api_calls_match_the_signatures(name, call):
    """Keyword arguments the README passes bind to the real signature (renames break this test)."""
    signature = inspect.signature(getattr(dalle_dist, name))
    kwargs = {kw.arg: None for kw in call.keywords if kw.arg is not None}
    signature.bind_partial(*([None] * len(call.args)), **kwargs)


def flag_table() -> list[tuple[str, str, list[str], str]]:
    """Rows of the "Coming from DALLE-pytorch" tables: (script, their flags, our column, our flags)."""
    section = README.split("## Coming from DALLE-pytorch", 1)[1].split("\n## ", 1)[0]
    rows = []
    for script, table in re.findall(r"#### (\S+)\n(.*?)(?=\n#### |\Z)", section, re.S):
        for line in table.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 3 and cells[0].startswith("`"):
                theirs = re.findall(r"`(--[a-z0-9_]+)`", cells[0])
                rows.append((script, cells[1], theirs, re.findall(r"`(--[a-z0-9_]+)`", cells[1])))
    return rows


def test_the_flag_table_covers_the_three_scripts():
    rows = flag_table()
    assert {script for script, *_ in rows} == set(SCRIPTS)
    assert sum(len(theirs) for _, _, theirs, _ in rows) >= 60


@pytest.mark.parametrize(("script", "column", "theirs", "ours"), flag_table(), ids=lambda v: str(v)[:30])
def test_flag_table_row_is_true(script, column, theirs, ours):
    """``same`` and named flags exist in our script; ``refused`` flags stop it with a sentence saying why."""
    if column == "refused":
        for flag in theirs:
            proc = run_cmd([sys.executable, ROOT / script, flag, "x"], expect=2)
            assert f"{flag} (a DALLE-pytorch flag) is not supported: " in proc.stderr, proc.stderr
        return
    expected = set(theirs) if column == "same" else set(ours)
    assert expected and expected <= accepted_flags(script), expected - accepted_flags(script)


def test_the_readme_tells_one_truth_about_taming_downloads():
    """train_dalle.py --taming without paths fetches the ImageNet VQGAN (dalle_job._new_vae): no README line
    about --taming may say that nothing is downloaded, and one says that it is."""
    from dalle_dist.download import VQGAN_MODEL
    from dalle_dist.training import dalle_job

    assert "fetch(VQGAN_MODEL)" in inspect.getsource(dalle_job._new_vae) and VQGAN_MODEL.url.startswith(
        "http"
    )
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if "--taming" in line]
    assert lines
    assert not [line for line in lines if re.search(r"nothing (is )?download|downloads nothing", line)], lines
    assert any("download" in line for line in lines)
