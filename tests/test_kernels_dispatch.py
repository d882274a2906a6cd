"""Choosing between the Triton kernels and the PyTorch reference, and launching on the right GPU."""

import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from minimind_kernels import dispatch
from minimind_kernels import functional as kernel_ops
from minimind_kernels.device_guard import on_device_of
from minimind_kernels.dispatch import KernelUnavailableError, resolve_impl, triton_interpreted
from minimind_kernels.reference import apply_rotary_torch, rms_norm_torch

CPU = torch.device("cpu")
# A CUDA device as resolve_impl sees it; no GPU is needed while the compile probe is replaced.
FAKE_CUDA0 = torch.device("cuda", 0)
NO_C_COMPILER = "Failed to find C compiler. Please specify via CC environment variable."
# Tolerance of the fused fp32 kernels against the fp32 reference (reduction order, rsqrt).
FP32_TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
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


def test_choice_is_made_once_per_impl_and_device(monkeypatch):
    """Later calls look the choice up: the availability check runs once per impl and device."""
    checked = []

    def available(device: torch.device) -> None:
        checked.append(device)

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(dispatch, "triton_unavailable_reason", available)
    dispatch.resolved_impl.cache_clear()
    try:
        assert [resolve_impl("triton", CPU) for _ in range(3)] == ["triton"] * 3
        assert [resolve_impl("auto", CPU) for _ in range(3)] == ["torch"] * 3
        assert checked == [CPU, CPU]  # once for triton, once for auto
    finally:
        dispatch.resolved_impl.cache_clear()  # later tests must not see this test's stand-in


def test_torch_path_is_the_reference():
    x = torch.randn(3, 5, 64, dtype=torch.bfloat16)
    weight = torch.randn(64, dtype=torch.bfloat16)
    assert torch.equal(kernel_ops.rms_norm(x, weight, 1e-5, impl="torch"), rms_norm_torch(x, weight, 1e-5))
    q, k = torch.randn(2, 4, 8, 16), torch.randn(2, 4, 2, 16)
    cos, sin = torch.randn(10, 16), torch.randn(10, 16)
    got = kernel_ops.apply_rotary(q, k, cos, sin, 3, impl="torch")
    expected = apply_rotary_torch(q, k, cos, sin, 3)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_package_imports_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from minimind_kernels import functional as kernel_ops\n"
        "from minimind_kernels.dispatch import KernelUnavailableError\n"
        "x = torch.randn(2, 8)\n"
        "kernel_ops.rms_norm(x, torch.ones(8), 1e-5)\n"
        "try:\n"
        "    kernel_ops.rms_norm(x, torch.ones(8), 1e-5, impl='triton')\n"
        "except KernelUnavailableError as e:\n"
        "    print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    assert "triton package is not installed" in result.stdout


@pytest.fixture
def compile_probe():
    """``minimind_kernels.compile_probe``, imported under conftest's TRITON_INTERPRET: Triton fixes
    whether a kernel is interpreted or compiled when it is decorated, at import."""
    return pytest.importorskip("minimind_kernels.compile_probe")


@pytest.fixture
def compiled_triton(monkeypatch, compile_probe):
    """Compiled (not interpreted) Triton, with the once-per-process choice, probe and log caches fresh."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    clear_dispatch_caches()
    yield
    # The next test (or a real GPU run) must probe for itself, not see this test's fake answer.
    clear_dispatch_caches()


def clear_dispatch_caches() -> None:
    """Forget every once-per-process answer of ``minimind_kernels.dispatch``."""
    for cached in (dispatch.resolved_impl, dispatch.triton_compile_failure, dispatch.log_auto_fallback):
        cached.cache_clear()


@pytest.fixture
def probed_devices(monkeypatch, request, compile_probe) -> list[torch.device]:
    """Replace the compile probe; it fails like a container without a C compiler if
    ``request.param`` is True. Returns the devices it was run on."""
    devices = []

    def fake_probe(device: torch.device) -> None:
        devices.append(device)
        if request.param:
            raise RuntimeError(f"{NO_C_COMPILER}\n  (the rest of a compiler traceback)")

    monkeypatch.setattr(compile_probe, "run_compile_probe", fake_probe)
    return devices


@pytest.mark.parametrize("probed_devices", [True], indirect=True)
def test_auto_falls_back_once_when_triton_cannot_compile(compiled_triton, probed_devices, caplog):
    with caplog.at_level(logging.WARNING, logger=dispatch.__name__):
        chosen = [resolve_impl("auto", FAKE_CUDA0) for _ in range(3)]
    assert chosen == ["torch"] * 3
    assert probed_devices == [FAKE_CUDA0]  # probed once, then cached
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert "\n" not in line and f"RuntimeError: {NO_C_COMPILER}" in line and "cuda:0" in line


@pytest.mark.parametrize("probed_devices", [True], indirect=True)
def test_triton_raises_one_line_when_triton_cannot_compile(compiled_triton, probed_devices):
    for _ in range(2):
        with pytest.raises(KernelUnavailableError) as error:
            resolve_impl("triton", FAKE_CUDA0)
        message = str(error.value)
        assert "\n" not in message and f"RuntimeError: {NO_C_COMPILER}" in message
    assert probed_devices == [FAKE_CUDA0]


@pytest.mark.parametrize("probed_devices", [False], indirect=True)
def test_triton_chosen_where_the_probe_compiles(compiled_triton, probed_devices, caplog, monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    with caplog.at_level(logging.WARNING, logger=dispatch.__name__):
        assert resolve_impl("auto", FAKE_CUDA0) == "triton"
        assert resolve_impl("triton", FAKE_CUDA0) == "triton"
        assert resolve_impl("auto", torch.device("cuda")) == "triton"  # bare "cuda": the current device
    assert probed_devices == [FAKE_CUDA0, torch.device("cuda", 1)]  # once per device
    assert caplog.records == []


@pytest.mark.parametrize("probed_devices", [True], indirect=True)
def test_interpreter_skips_the_probe(probed_devices, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_impl("triton", FAKE_CUDA0) == "triton"
    assert probed_devices == []


def test_probe_kernel_copies_under_the_interpreter(compile_probe):
    if not triton_interpreted():
        pytest.skip("checks the probe kernel interpreted on CPU; test_real_compile_probe runs it compiled")
    compile_probe.run_compile_probe(CPU)


def test_real_compile_probe(compiled_triton, cuda_device):
    if triton_interpreted():
        pytest.skip("TRITON_INTERPRET=1 was set, so kernels here are interpreted, not compiled")
    assert dispatch.triton_compile_failure(cuda_device.index) is None
    assert resolve_impl("auto", cuda_device) == "triton"


def test_guard_selects_the_tensors_gpu(monkeypatch):
    selected = []
    monkeypatch.setattr(torch.cuda, "device", lambda device: selected.append(device) or SimpleNamespace())
    on_device_of(SimpleNamespace(device=torch.device("cuda", 1)))
    assert selected == [torch.device("cuda", 1)]


def run_every_launcher(impl: str, device: torch.device) -> list[torch.Tensor]:
    """Outputs and input gradients of rms_norm, rms_norm_residual and apply_rotary (fp32)."""
    gen = torch.Generator().manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, generator=gen).to(device).requires_grad_()

    x, residual, weight = leaf(2, 5, 96), leaf(2, 5, 96), leaf(96)
    q, k = leaf(2, 5, 4, 16), leaf(2, 5, 2, 16)
    cos, sin = torch.randn(8, 16, generator=gen).to(device), torch.randn(8, 16, generator=gen).to(device)
    normed = kernel_ops.rms_norm(x, weight, 1e-5, impl=impl)
    normed_sum, summed = kernel_ops.rms_norm_residual(x, residual, weight, 1e-5, impl=impl)
    q_rot, k_rot = kernel_ops.apply_rotary(q, k, cos, sin, position_offset=2, impl=impl)
    outputs = [normed, normed_sum, summed, q_rot, k_rot]
    sum(out.pow(2).sum() for out in outputs).backward()
    return [t.detach() for t in outputs] + [x.grad, residual.grad, weight.grad, q.grad, k.grad]


def assert_triton_matches_reference(device: torch.device) -> None:
    for got, expected in zip(run_every_launcher("triton", device), run_every_launcher("torch", device), strict=True):
        assert got.device == device
        torch.testing.assert_close(got, expected, **FP32_TOLERANCE)


def test_every_launcher_runs_under_the_guard(device, monkeypatch):
    pytest.importorskip("triton")
    from minimind_kernels import fused_rms_norm, rope

    guarded = []

    def recording_guard(tensor):
        guarded.append(tensor.device)
        return on_device_of(tensor)

    monkeypatch.setattr(fused_rms_norm, "on_device_of", recording_guard)
    monkeypatch.setattr(rope, "on_device_of", recording_guard)
    run_every_launcher("triton", device)
    assert guarded == [device] * 6  # three ops, forward and backward


def test_guard_is_a_no_op_on_cpu(monkeypatch):
    pytest.importorskip("triton")
    if not triton_interpreted():
        pytest.skip("Triton runs on CPU tensors only interpreted (TRITON_INTERPRET=1)")

    def no_cuda_device(device):
        raise AssertionError(f"a CPU launch selected CUDA device {device}")

    monkeypatch.setattr(torch.cuda, "device", no_cuda_device)
    assert_triton_matches_reference(CPU)


@pytest.mark.usefixtures("cuda_device")
def test_kernels_launch_on_their_tensors_gpu():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices to launch on the non-current one")
    torch.cuda.set_device(0)
    assert_triton_matches_reference(torch.device("cuda", 1))
    assert torch.cuda.current_device() == 0  # the guard restores the current device
