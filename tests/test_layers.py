"""Imports run one way: kernels <- errors <- model <- tokenizer <- data <- checkpoint <- training <- entry points,
and inside ``training`` in the order of ``TRAINING_ORDER``.

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
ENTRY_POINTS = ("pretrain_ds", "sft_ds", "dpo_ds", "bench", "minimind.plan", "minimind.generate", "minimind.report",
                "minimind.tokenizer.train", "minimind.checkpoint.__main__")
DISTRIBUTED = ("deepspeed", "torch.distributed")
LOCAL = LAYERS[:5]  # the model and its data: no distribution in them
# Inside minimind.training, bottom to top: the stages (their names and flag defaults); the training position every
# part reads; the run's config (its sections, which every part below the flags takes instead of argparse); who
# the rank is and how ranks talk; the machine; the DeepSpeed JSON and batch; the output folder; checkpoints;
# AutoEP; evaluation; metrics; the loop; one run's pieces; the flags; the run built from them; the scripts'
# command line; what code outside may import.
TRAINING_ORDER = ("stages", "position", "config", "distributed", "hardware", "ds_config", "run_dir", "checkpoints",
                  "parallel", "evaluation", "metrics", "loop", "run", "arguments", "stage_run", "entry", "api")
# Endings that make two names in one folder hard to tell apart (checkpointer, checkpointing, checkpoints).
WORD_ENDINGS = ("ings", "ing", "ers", "er", "ors", "or", "ions", "ion", "es", "s")
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


def training_part(module: str) -> int | None:
    """Index in ``TRAINING_ORDER`` of a module of ``minimind.training`` (its subpackage or root module)."""
    parts = module.split(".")
    if parts[:2] != ["minimind", "training"] or len(parts) < 3:
        return None
    return TRAINING_ORDER.index(parts[2])


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
            own_part, target_part = training_part(module), training_part(imported)
            if own_part is not None and target_part is not None and target_part > own_part:
                found.append(f"{module} imports {imported} (training: {TRAINING_ORDER[own_part]} -> "
                             f"{TRAINING_ORDER[target_part]})")
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
    ("minimind.checkpoint.export", 5), ("bench.kernels", 7), ("torch", None),
    ("minimind.training.distributed.world", 6),
])
def test_every_module_has_its_layer(module, expected):
    assert layer_of(module) == expected


def test_every_module_of_training_has_its_place_in_the_order():
    packages = {path.parent.name for path in python_files("minimind/training") if path.name == "__init__.py"}
    modules = {path.stem for path in (REPO_ROOT / "minimind" / "training").glob("*.py") if path.stem != "__init__"}
    assert packages - {"training"} | modules == set(TRAINING_ORDER)
    assert training_part("minimind.training.loop.steps") > training_part("minimind.training.checkpoints.tags")


def word_stem(name: str) -> str:
    """``name`` without an ending of ``WORD_ENDINGS`` on its last word (``checkpointing`` -> ``checkpoint``)."""
    for ending in WORD_ENDINGS:
        if name.endswith(ending) and len(name) - len(ending) >= 3:
            return name[: -len(ending)]
    return name


def look_alike_names() -> list[str]:
    """Pairs of modules or packages in one folder whose names differ only by a word ending."""
    folders = {path.parent for path in project_modules()}
    found = []
    for folder in sorted(folders):
        names = sorted({path.stem for path in folder.glob("*.py") if path.stem != "__init__"}
                       | {path.name for path in folder.iterdir() if (path / "__init__.py").is_file()})
        by_stem = {}
        for name in names:
            by_stem.setdefault(word_stem(name), []).append(name)
        found += [f"{folder.relative_to(REPO_ROOT)}: {', '.join(group)}"
                  for group in by_stem.values() if len(group) > 1]
    return found


def test_no_two_names_in_a_folder_differ_only_by_a_word_ending():
    assert word_stem("checkpointing") == word_stem("checkpointer") == word_stem("checkpoints") == "checkpoint"
    assert look_alike_names() == []


def test_only_the_flags_module_of_training_sees_argparse():
    """The run config is resolved once from the command line (``arguments.run_config``): below it, every part of
    training takes config sections, never an ``argparse.Namespace``."""
    seeing = sorted(import_name(path) for path in python_files("minimind/training")
                    if "argparse" in imported_modules(path))
    assert seeing == ["minimind.training.arguments"]
