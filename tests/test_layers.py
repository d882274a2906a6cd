"""Imports run one way: kernels <- errors <- model <- tokenizer <- data <- checkpoint <- training <- entry points.

Every import of every module (top-level and inside functions) is read with ``ast``. A module
may import its own layer or a lower one, never a higher one; the layers that make up the
model and its data (``kernels``, ``model``, ``tokenizer``, ``data``) import nothing
distributed. Command modules (``python -m ...``) and ``bench/`` are entry points; ``bench/`` reaches
the training side through its public API only (``minimind.training.api``).
"""

import ast
from pathlib import Path

import pytest

from tests.project_tree import REPO_ROOT, import_name, python_files

# ``minimind.errors`` (the user-facing error family) and ``minimind.flags`` (flag parsing) import
# nothing else of the project; the kernels stay a library that knows nothing of the application above it.
LAYERS = ("minimind_kernels", "minimind.errors", "minimind.model", "minimind.tokenizer", "minimind.data",
          "minimind.checkpoint", "minimind.training")
ENTRY_POINTS = ("pretrain_ds", "bench", "minimind.plan", "minimind.generate", "minimind.report",
                "minimind.tokenizer.train", "minimind.checkpoint.__main__")
DISTRIBUTED = ("deepspeed", "torch.distributed")
LOCAL = LAYERS[:5]  # the model and its data: no distribution in them
TRAINING_API = "minimind.training.api"  # what code outside the training side may import of it


def layer_of(module: str) -> int | None:
    """Index of ``module``'s layer (entry points above them all); None outside the project."""
    if any(module == entry or module.startswith(f"{entry}.") for entry in ENTRY_POINTS):
        return len(LAYERS)
    if module == "minimind":  # the package's own __init__: the model's public names
        return LAYERS.index("minimind.model")
    if module == "minimind.flags":  # flag parsing for every command: beside the errors it raises
        return LAYERS.index("minimind.errors")
    for index, layer in reversed(list(enumerate(LAYERS))):
        if module == layer or module.startswith(f"{layer}."):
            return index
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, wherever the import statement stands."""
    package = import_name(path) if path.name == "__init__.py" else import_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # a submodule imported by name
    return names


def project_modules() -> list[Path]:
    return [REPO_ROOT / "pretrain_ds.py", *python_files("kernels", "minimind", "bench")]


def crossings() -> list[str]:
    found = []
    for path in project_modules():
        module = import_name(path)
        own = layer_of(module)
        for imported in imported_modules(path):
            target = layer_of(imported)
            if target is not None and target > own:
                found.append(f"{module} imports {imported} ({LAYERS[own]} -> {LAYERS[target]})"
                             if target < len(LAYERS) else f"{module} imports the entry point {imported}")
            if own < len(LOCAL) and any(imported == d or imported.startswith(f"{d}.") for d in DISTRIBUTED):
                found.append(f"{module} imports {imported}, but {LAYERS[own]} must know nothing of distribution")
    return sorted(set(found))


def test_imports_run_one_way():
    assert len(project_modules()) > 50
    assert crossings() == []


def test_benchmarks_reach_training_only_through_its_public_api():
    internal = sorted(f"{import_name(path)} imports {imported}" for path in python_files("bench")
                      for imported in imported_modules(path)
                      if imported.startswith("minimind.training.") and imported != TRAINING_API
                      and not imported.startswith(f"{TRAINING_API}."))
    assert internal == []
    assert TRAINING_API in {imported for path in python_files("bench") for imported in imported_modules(path)}


@pytest.mark.parametrize("module, expected", [
    ("minimind_kernels.dispatch", 0), ("minimind.errors", 1), ("minimind.flags", 1), ("minimind", 2),
    ("minimind.model.moe", 2),
    ("minimind.data.token_cache", 4), ("minimind.tokenizer.train", 7), ("minimind.checkpoint.__main__", 7),
    ("minimind.checkpoint.export", 5), ("bench.kernels", 7), ("torch", None), ("minimind.training.world", 6),
])
def test_every_module_has_its_layer(module, expected):
    assert layer_of(module) == expected
