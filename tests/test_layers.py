"""The package's layering (../shared/DESIGN.md, README "Layout"): every module imports, and every import of
one dalle_dist module by another points down a floor, never up or sideways into a peer, so that models
never see engines, and nothing below the scripts reaches into training/.

Imports are read from each module's source (the ones inside functions too), and each module is also
imported, so a module that cannot load fails here as well.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "dalle_dist"

# the floors, lowest first: a module may import the floors below its own, and its own package
FLOORS: list[set[str]] = [
    {"errors", "files"},  # the exceptions users see; atomic file writes
    {"devices", "safe_load", "download", "lock"},  # helpers over them
    {"attention"},  # mask functions and the kernels that run them
    {"models", "text", "data"},  # nn.Modules, tokenizers, datasets: three peers
    {"distributed"},  # the engines
    {"checkpoint", "cli"},  # what every script reads and parses with
    {"__init__"},  # the public API: models, tokenizers, and the checkpoint reader behind from_pretrained
    {"evaluation"},  # scores (used by generation)
    {"training", "generation", "convert", "encode_tokens", "plot"},  # trainers and the other tools
]
FLOOR_OF = {unit: level for level, units in enumerate(FLOORS) for unit in units}
# the scripts sit above every floor and may import anything
SCRIPTS = (
    "train_vae.py",
    "train_dalle.py",
    "train_clip.py",
    "train_prior.py",
    "train_decoder.py",
    "generate.py",
    "evaluate.py",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """``dalle_dist.training.loop`` -> ``training``; the package's own ``__init__`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, module)`` of every dalle_dist module that ``source`` imports, relative imports resolved."""
    package = module if is_package else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names] if node.module is None else [target]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in found if name == "dalle_dist" or name.startswith("dalle_dist.")]


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of ``source`` (module ``module``) that break the floors, as readable lines."""
    own = unit_of(module)
    problems = []
    for line, target in imported_modules(source, module, is_package):
        unit = unit_of(target)
        if unit == own and own != "__init__":
            continue  # within one package (or module)
        if unit not in FLOOR_OF:
            problems.append(f"{module}:{line} imports {target}, which is on no floor (add it to FLOORS)")
        elif FLOOR_OF[unit] >= FLOOR_OF[own]:
            way = "sideways into a peer" if FLOOR_OF[unit] == FLOOR_OF[own] else "up"
            problems.append(
                f"{module}:{line} imports {target}: {way} (floor {FLOOR_OF[own]} -> {FLOOR_OF[unit]})"
            )
    return problems


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_unit_has_a_floor():
    units = {unit_of(module_name(path)) for path in MODULES}
    assert units <= set(FLOOR_OF), f"modules on no floor: {sorted(units - set(FLOOR_OF))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_module_imports_and_points_down(path):
    module = module_name(path)
    importlib.import_module(module)
    assert upward_imports(path.read_text(encoding="utf-8"), module, path.name == "__init__.py") == []


def test_the_check_catches_arrows_that_run_up_or_sideways():
    """The checker itself: upward, sideways and lazy imports are caught; downward ones pass."""
    assert upward_imports("from ..training.loop import TrainingLoop", "dalle_dist.data.folder")
    assert upward_imports("from ..distributed import BackendConfig", "dalle_dist.models.dalle")
    assert upward_imports("def f():\n    from ..text import Tokenizer\n", "dalle_dist.data.shards")
    assert upward_imports("import dalle_dist.checkpoint", "dalle_dist.cli.parser")
    assert upward_imports("from .. import training", "dalle_dist.models.vae")
    assert not upward_imports("from ..attention import AttentionPlan", "dalle_dist.models.transformer")
    assert not upward_imports("from .kv_cache import KVCache", "dalle_dist.models.sampling")
    assert not upward_imports("from ..checkpoint import load_clip", "dalle_dist.evaluation.evaluate")


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_stay_thin(script):
    """A script parses nothing itself: it imports its main and the runner's exit, and calls them."""
    source = (ROOT / script).read_text(encoding="utf-8")
    tree = ast.parse(source)
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert not functions, f"{script} defines {[f.name for f in functions]}: that belongs in the package"
    assert len(source.splitlines()) < 15
