"""Peak FLOP/s for MFU: the per-variant, per-dtype table, the measured fallback and the TF32 reading."""

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from minimind.training.hardware import peak_flops as peak_flops_module
from minimind.training.hardware.peak_flops import peak_flops, tf32_enabled

CUDA = torch.device("cuda", 0)  # a device object only; nothing runs on it

# Dense TFLOP/s (bf16, fp16, tf32, fp32) from the vendors' data sheets, written out here
# independently of the module's table, keyed by names as torch.cuda.get_device_name() reports them.
DATA_SHEETS = {
    "NVIDIA A100-SXM4-80GB": (312, 312, 156, 19.5),
    "NVIDIA A100-SXM4-40GB": (312, 312, 156, 19.5),
    "NVIDIA A100-PCIE-40GB": (312, 312, 156, 19.5),
    "NVIDIA A100 80GB PCIe": (312, 312, 156, 19.5),
    "NVIDIA A800-SXM4-80GB": (312, 312, 156, 19.5),
    "NVIDIA H100 80GB HBM3": (989, 989, 494.5, 67),
    "NVIDIA H100": (989, 989, 494.5, 67),
    "NVIDIA H100 PCIe": (756, 756, 378, 51),
    "NVIDIA H100 NVL": (835, 835, 417.5, 60),
    "NVIDIA H200": (989, 989, 494.5, 67),
    "NVIDIA H200 NVL": (835, 835, 417.5, 60),
    "NVIDIA GH200 480GB": (989, 989, 494.5, 67),
    "NVIDIA H800": (989, 989, 494.5, 67),
    "NVIDIA H800 PCIe": (756, 756, 378, 51),
    "NVIDIA B200": (2250, 2250, 1100, 80),
    "NVIDIA L40S": (362.05, 362.05, 183, 91.6),
    "NVIDIA L40": (181.05, 181.05, 90.5, 90.5),
    "NVIDIA L4": (121, 121, 60, 30.3),
    "NVIDIA A10": (125, 125, 62.5, 31.2),
    "NVIDIA GeForce RTX 4090": (165.2, 165.2, 82.6, 82.6),
    "NVIDIA GeForce RTX 3090": (71, 71, 35.6, 35.6),
    "AMD Instinct MI300X": (1307.4, 1307.4, 653.7, 163.4),
    "AMD Instinct MI325X": (1307.4, 1307.4, 653.7, 163.4),
}

# Names that contain a listed one but are other parts (or parts without a data-sheet figure
# for every dtype); each must be measured, never given a neighbour's peak.
UNLISTED = [
    "NVIDIA A10G",
    "NVIDIA GB200",
    "NVIDIA GeForce RTX 3090 Ti",
    "NVIDIA GeForce RTX 4090 D",
    "Tesla V100-SXM2-16GB",
    "AMD Instinct MI300A",
    "Some Future GPU",
]


def fake_device_name(monkeypatch, name: str) -> None:
    """Make ``torch.cuda.get_device_name`` report ``name``, with no GPU present."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def no_measuring(*args, **kwargs):
    """Stand-in for the measurement where a table figure is expected."""
    raise AssertionError("a listed GPU must not be measured")


@pytest.mark.parametrize("name", sorted(DATA_SHEETS))
def test_listed_gpu_peaks_per_dtype(monkeypatch, name):
    fake_device_name(monkeypatch, name)
    monkeypatch.setattr(peak_flops_module, "measured_matmul_flops", no_measuring)
    bf16, fp16, tf32, fp32 = (tflops * 1e12 for tflops in DATA_SHEETS[name])
    # Exact up to float rounding of the TFLOP/s -> FLOP/s scaling.
    assert peak_flops(CUDA, torch.bfloat16, tf32=False) == pytest.approx(bf16, rel=1e-12)
    assert peak_flops(CUDA, torch.float16, tf32=False) == pytest.approx(fp16, rel=1e-12)
    assert peak_flops(CUDA, torch.float32, tf32=True) == pytest.approx(tf32, rel=1e-12)
    assert peak_flops(CUDA, torch.float32, tf32=False) == pytest.approx(fp32, rel=1e-12)
    # The TF32 switch concerns fp32 inputs only.
    assert peak_flops(CUDA, torch.bfloat16, tf32=True) == pytest.approx(bf16, rel=1e-12)
    assert peak_flops(CUDA, torch.float16, tf32=True) == pytest.approx(fp16, rel=1e-12)


@pytest.mark.parametrize("variant", ["NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H800 PCIe", "NVIDIA H200 NVL"])
def test_h100_variants_are_not_the_sxm_part(monkeypatch, variant):
    fake_device_name(monkeypatch, variant)
    sxm_bf16, _, sxm_tf32, sxm_fp32 = DATA_SHEETS["NVIDIA H100 80GB HBM3"]
    assert peak_flops(CUDA, torch.bfloat16, tf32=False) < sxm_bf16 * 1e12
    assert peak_flops(CUDA, torch.float32, tf32=True) < sxm_tf32 * 1e12
    assert peak_flops(CUDA, torch.float32, tf32=False) < sxm_fp32 * 1e12


@pytest.mark.parametrize("name", UNLISTED)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_unlisted_gpu_is_measured_with_a_large_matmul(monkeypatch, name, dtype):
    fake_device_name(monkeypatch, name)
    calls = []

    def measured(device, dtype, size, seconds=None):
        calls.append((device, dtype, size))
        return 123e12

    monkeypatch.setattr(peak_flops_module, "measured_matmul_flops", measured)
    assert peak_flops(CUDA, dtype, tf32=True) == 123e12
    assert calls == [(CUDA, dtype, 8192)]


def test_unsupported_dtype_is_refused(monkeypatch):
    fake_device_name(monkeypatch, "NVIDIA H100 80GB HBM3")
    with pytest.raises(ValueError, match="float64"):
        peak_flops(CUDA, torch.float64, tf32=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_measurement_is_positive_and_finite(dtype):
    flops = peak_flops(torch.device("cpu"), dtype, tf32=False)
    assert math.isfinite(flops) and flops > 0


def test_cpu_measures_a_small_matmul(monkeypatch):
    sizes = []

    def measured(device, dtype, size, seconds=None):
        sizes.append(size)
        return 1e9

    monkeypatch.setattr(peak_flops_module, "measured_matmul_flops", measured)
    peak_flops(torch.device("cpu"), torch.float32, tf32=True)
    assert sizes in ([1024], [256])


def test_tf32_enabled_follows_torch_s_setting_whichever_api_set_it():
    # In a fresh process: torch's TF32 state is global, and once the legacy and new setters have
    # both been used its legacy getter raises for the rest of the process.
    script = (
        "import torch\n"
        "from minimind.training.hardware.peak_flops import tf32_enabled\n"
        "assert tf32_enabled() is False\n"  # torch's default: IEEE fp32 matmuls
        "torch.backends.cuda.matmul.fp32_precision = 'tf32'\n"
        "assert tf32_enabled() is True\n"
        "torch.backends.cuda.matmul.fp32_precision = 'ieee'\n"
        "assert tf32_enabled() is False\n"
        "torch.set_float32_matmul_precision('high')\n"  # what pretrain does for fp32 on CUDA
        "assert tf32_enabled() is True\n"
        "torch.backends.cuda.matmul.fp32_precision = 'ieee'\n"
        "assert tf32_enabled() is False\n"
        "torch.backends.cuda.matmul.allow_tf32 = True\n"
        "assert tf32_enabled() is True\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_tf32_enabled_on_torch_without_fp32_precision(monkeypatch):
    # torch < 2.9 has only the ``allow_tf32`` flag.
    monkeypatch.setattr(torch.backends.cuda, "matmul", SimpleNamespace(allow_tf32=True))
    assert tf32_enabled() is True
    monkeypatch.setattr(torch.backends.cuda, "matmul", SimpleNamespace(allow_tf32=False))
    assert tf32_enabled() is False
