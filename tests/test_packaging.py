"""The project installs and imports beside every distribution it depends on.

Hugging Face's ``kernels`` distribution (which ``transformers`` imports) owns the import name
``kernels``; the project's Triton kernels, in the top-level folder ``kernels/``, are imported as
``minimind_kernels``. These tests fail when any import name of the project is another installed
distribution's, and show both ``kernels`` packages working in one process, from the repository
root and from another working directory.
"""

import importlib.metadata
import os
import subprocess
import sys
import tomllib

import pytest

from tests.project_tree import REPO_ROOT, python_files

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
DISTRIBUTION = PYPROJECT["project"]["name"]


def project_import_names() -> set[str]:
    """Every top-level name the project can be imported under: its installed packages and, from the
    repository root, each top-level package folder (one with ``__init__.py``) and module."""
    names = {package.split(".")[0] for package in PYPROJECT["tool"]["setuptools"]["packages"]}
    names |= {path.name for path in REPO_ROOT.iterdir() if (path / "__init__.py").is_file()}
    names |= {path.stem for path in REPO_ROOT.glob("*.py")}
    return names


def test_no_import_name_of_the_project_is_another_distributions():
    others = {name: [d for d in dists if d != DISTRIBUTION]
              for name, dists in importlib.metadata.packages_distributions().items()}
    clashes = {name: others[name] for name in project_import_names() if others.get(name)}
    assert clashes == {}


def test_the_kernels_folder_is_no_package_named_kernels():
    """Without ``__init__.py`` the folder is at most a namespace portion, which any installed
    ``kernels`` package takes precedence over, wherever the repository root stands on ``sys.path``."""
    assert not (REPO_ROOT / "kernels" / "__init__.py").exists()
    assert "kernels" not in project_import_names()


def test_every_package_folder_is_installed():
    """``pyproject.toml`` lists the packages one by one (the kernels' folder is mapped to another
    name): a package folder missing there would be missing from a non-editable install."""
    folders = {path.parent for path in python_files("minimind") if path.name == "__init__.py"}
    listed = {REPO_ROOT / package.replace(".", "/") for package in PYPROJECT["tool"]["setuptools"]["packages"]
              if package.startswith("minimind.") or package == "minimind"}
    assert folders == listed
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"minimind_kernels": "kernels"}


BOTH_KERNELS = """
import importlib.util, pathlib, sys
import torch
import transformers.integrations.hub_kernels
from minimind_kernels import functional as kernel_ops
from minimind_kernels.reference import rms_norm_torch
import minimind
repo = pathlib.Path(sys.argv[1])
spec = importlib.util.find_spec("kernels")
if spec is not None and spec.origin is not None:  # Hugging Face's kernels is installed: it is the one imported
    import kernels
    assert repo not in pathlib.Path(kernels.__file__).resolve().parents, kernels.__file__
    print("hub kernels", kernels.__file__)
x, weight = torch.randn(3, 7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
assert torch.equal(kernel_ops.rms_norm(x, weight, 1e-5, impl="torch"), rms_norm_torch(x, weight, 1e-5))
print("project kernels", kernel_ops.__file__)
"""


@pytest.mark.parametrize("where", ["repository root", "another folder"])
def test_hub_kernels_and_the_project_kernels_in_one_process(where, tmp_path):
    cwd = REPO_ROOT if where == "repository root" else tmp_path
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", BOTH_KERNELS, str(REPO_ROOT)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"project kernels {REPO_ROOT / 'kernels' / 'functional.py'}" in result.stdout


def test_the_entry_point_starts_from_another_folder(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "pretrain_ds.py"), "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--deepspeed_config" in result.stdout
