"""The project's own modules as files and as import names.

The folder ``kernels/`` is imported as ``minimind_kernels`` (``pyproject.toml`` maps it; the
name ``kernels`` belongs to Hugging Face's distribution), so a file's import name is not always
its path.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# top-level folder -> the import name its files have
IMPORT_ROOTS = {"kernels": "minimind_kernels", "minimind": "minimind", "bench": "bench"}


def import_name(path: Path) -> str:
    """The import name of the project file ``path`` (``kernels/rope.py`` is ``minimind_kernels.rope``)."""
    parts = path.resolve().relative_to(REPO_ROOT).with_suffix("").parts
    parts = (IMPORT_ROOTS.get(parts[0], parts[0]), *parts[1:])
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def python_files(*folders: str) -> list[Path]:
    """Every ``.py`` file under the top-level ``folders``, sorted."""
    return [path for folder in folders for path in sorted((REPO_ROOT / folder).rglob("*.py"))]

# The first lines of a script that must run without the project (a Hugging Face export's user):
# the project is installed in the test environment, so its import names are blocked instead.
WITHOUT_THE_PROJECT = (
    "import sys\n"
    "for _name in ('minimind', 'minimind_kernels'):\n"
    "    sys.modules[_name] = None  # import raises ModuleNotFoundError\n"
)
