"""Choosing between the Triton kernels and the PyTorch reference."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels
from kernels.dispatch import KernelUnavailableError, resolve_impl
from kernels.reference import apply_rotary_torch, rms_norm_torch

CPU = torch.device("cpu")
REPO_ROOT = Path(__file__).resolve().parents[1]


def test_triton_on_cpu_without_interpreter_raises_one_line(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(KernelUnavailableError) as error:
        resolve_impl("triton", CPU)
    message = str(error.value)
    assert "\n" not in message and "CUDA" in message and "TRITON_INTERPRET=1" in message


def test_resolution(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert resolve_impl("auto", CPU) == "torch"
    assert resolve_impl("torch", CPU) == "torch"
    with pytest.raises(ValueError, match="must be one of"):
        resolve_impl("cuda", CPU)


def test_interpreter_allows_triton_on_cpu(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_impl("triton", CPU) == "triton"
    assert resolve_impl("auto", CPU) == "torch"  # auto never picks the slow interpreter


def test_torch_path_is_the_reference():
    x = torch.randn(3, 5, 64, dtype=torch.bfloat16)
    weight = torch.randn(64, dtype=torch.bfloat16)
    assert torch.equal(kernels.rms_norm(x, weight, 1e-5, impl="torch"), rms_norm_torch(x, weight, 1e-5))
    q, k = torch.randn(2, 4, 8, 16), torch.randn(2, 4, 2, 16)
    cos, sin = torch.randn(10, 16), torch.randn(10, 16)
    got = kernels.apply_rotary(q, k, cos, sin, 3, impl="torch")
    expected = apply_rotary_torch(q, k, cos, sin, 3)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_public_functions_survive_the_lazy_imports():
    """Loading the Triton modules must not rebind ``kernels.rms_norm`` / ``kernels.apply_rotary``."""
    pytest.importorskip("triton")
    import kernels.fused_rms_norm  # noqa: F401
    import kernels.rope  # noqa: F401

    assert callable(kernels.rms_norm) and callable(kernels.apply_rotary)


def test_package_imports_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, kernels\n"
        "from kernels import KernelUnavailableError\n"
        "x = torch.randn(2, 8)\n"
        "kernels.rms_norm(x, torch.ones(8), 1e-5)\n"
        "try:\n"
        "    kernels.rms_norm(x, torch.ones(8), 1e-5, impl='triton')\n"
        "except KernelUnavailableError as e:\n"
        "    print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    assert "triton package is not installed" in result.stdout
