"""Peak FLOP/s of the device, for the MFU estimate: a per-dtype table for known GPUs, else a measured matmul rate."""

import re
import time
from dataclasses import dataclass

import torch

# Long enough to average over clock and launch jitter, short enough not to delay the first step.
MEASURE_SECONDS = 0.3
# Square matmul size measured on accelerators missing from the table: large enough to keep the
# tensor cores busy, as the model's matmuls do, and at most 0.8 GB for three fp32 matrices.
ACCELERATOR_MATMUL_SIZE = 8192


@dataclass(frozen=True)
class DensePeaks:
    """Dense (no structured sparsity) peak TFLOP/s of one GPU variant per matmul precision."""

    half: float  # bf16 and fp16 on the tensor (matrix) cores, fp32 accumulation
    tf32: float  # fp32 inputs on the tensor cores as TF32 (AMD: XF32)
    fp32: float  # IEEE fp32 (the vector units; on CDNA3 the matrix cores, at the same rate)

    def flops(self, dtype: torch.dtype, tf32: bool) -> float:
        """FLOP/s for matmuls in ``dtype``; ``tf32`` says whether fp32 matmuls may use TF32."""
        if dtype in (torch.bfloat16, torch.float16):
            return self.half * 1e12
        if dtype == torch.float32:
            return (self.tf32 if tf32 else self.fp32) * 1e12
        raise ValueError(f"no peak FLOP/s for {dtype}; training runs in bf16, fp16 or fp32")


# Vendors' data sheets print the sparse tensor-core figures (marked *) beside or instead of
# the dense ones; the dense figure is half the sparse one (for the H100 family's bf16, the
# 989 / 756 / 835 commonly quoted for 1,979* / 1,513* / 1,671*). Sources, per row group below.
# NVIDIA A100 data sheet (SXM and PCIe, 40 and 80 GB): BF16/FP16 312, TF32 156, FP32 19.5.
# The A800 differs only in NVLink bandwidth (NVIDIA A800 data sheet).
A100 = DensePeaks(half=312, tf32=156, fp32=19.5)
# NVIDIA H100 data sheet, SXM column: BF16 1,979*, TF32 989*, FP32 67. The H200 (SXM) and H800
# SXM data sheets print the same figures, the GH200 one the same up to rounding (BF16 990).
H100_SXM = DensePeaks(half=989, tf32=494.5, fp32=67)
# NVIDIA H100 data sheet, PCIe column: BF16 1,513*, TF32 756*, FP32 51 (H800 PCIe: the same).
H100_PCIE = DensePeaks(half=756, tf32=378, fp32=51)
# NVIDIA H100 data sheet, NVL column (per GPU): BF16 1,671*, TF32 835*, FP32 60 (H200 NVL: the same).
H100_NVL = DensePeaks(half=835, tf32=417.5, fp32=60)
# NVIDIA HGX B200 (1,000 W) per-GPU figures from the Blackwell data sheet: BF16/FP16 4.5 PF*,
# TF32 2.2 PF*, FP32 80 TF.
B200 = DensePeaks(half=2250, tf32=1100, fp32=80)
# NVIDIA L40S data sheet: BF16/FP16 362.05 | 733*, TF32 183 | 366*, FP32 91.6.
L40S = DensePeaks(half=362.05, tf32=183, fp32=91.6)
# NVIDIA L40 data sheet: BF16/FP16 181.05 | 362.1*, TF32 90.5 | 181*, FP32 90.5.
L40 = DensePeaks(half=181.05, tf32=90.5, fp32=90.5)
# NVIDIA L4 data sheet (sparse only): BF16/FP16 242*, TF32 120*, FP32 30.3.
L4 = DensePeaks(half=121, tf32=60, fp32=30.3)
# NVIDIA A10 data sheet: BF16/FP16 125 | 250*, TF32 62.5 | 125*, FP32 31.2.
A10 = DensePeaks(half=125, tf32=62.5, fp32=31.2)
# NVIDIA Ada Lovelace architecture white paper, RTX 4090 (FP32 accumulation, the one training
# uses; GeForce runs FP16 accumulation at twice the rate): BF16/FP16 165.2, TF32 82.6, FP32 82.6.
RTX_4090 = DensePeaks(half=165.2, tf32=82.6, fp32=82.6)
# NVIDIA Ampere GA102 white paper, RTX 3090 (FP32 accumulation): BF16/FP16 71, TF32 35.6, FP32 35.6.
RTX_3090 = DensePeaks(half=71, tf32=35.6, fp32=35.6)
# AMD Instinct MI300X data sheet: BF16/FP16 1,307.4, TF32 653.7, FP32 (matrix) 163.4.
# The MI325X data sheet prints the same compute figures.
MI300X = DensePeaks(half=1307.4, tf32=653.7, fp32=163.4)

# Searched in ``torch.cuda.get_device_name()``, case-insensitively (A100 PCIe cards say "PCIE",
# H100 ones "PCIe"); the first match wins, so each variant (PCIe, NVL) comes before its plain
# name, which is the SXM part ("NVIDIA H100 80GB HBM3", "NVIDIA H200"). Word boundaries keep
# "L40" off "L40S", "A10" off "A100" and "A10G", "H200" off "GH200" and "B200" off "GB200";
# GeForce names are anchored at the end so that "RTX 3090 Ti" and "RTX 4090 D" are not taken.
# Devices not listed (V100, which has no bf16 or TF32 tensor cores, A10G, GB200, MI300A, ...)
# are measured.
GPU_DENSE_PEAKS = (
    (r"\bH100\b.*\bPCIe\b", H100_PCIE),
    (r"\bH100\b.*\bNVL\b", H100_NVL),
    (r"\bH100\b", H100_SXM),
    (r"\bH200\b.*\bNVL\b", H100_NVL),
    (r"\bH200\b", H100_SXM),
    (r"\bGH200\b", H100_SXM),
    (r"\bH800\b.*\bPCIe\b", H100_PCIE),
    (r"\bH800\b", H100_SXM),
    (r"\bA100\b", A100),
    (r"\bA800\b", A100),
    (r"\bB200\b", B200),
    (r"\bL40S\b", L40S),
    (r"\bL40\b", L40),
    (r"\bL4\b", L4),
    (r"\bA10\b", A10),
    (r"\bRTX 4090$", RTX_4090),
    (r"\bRTX 3090$", RTX_3090),
    (r"\bMI300X\b", MI300X),
    (r"\bMI325X\b", MI300X),
)


def gpu_dense_peaks(name: str) -> DensePeaks | None:
    """The table row for a ``torch.cuda.get_device_name()`` string, or None when it is not listed."""
    for pattern, peaks in GPU_DENSE_PEAKS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return peaks
    return None


def tf32_enabled() -> bool:
    """Whether torch currently lets fp32 matmuls on CUDA (and ROCm) devices run as TF32."""
    matmul = torch.backends.cuda.matmul
    # torch >= 2.9 reports the effective setting here whichever API set it; its legacy
    # ``allow_tf32`` getter raises once the old and new setters have both been used.
    if hasattr(matmul, "fp32_precision"):
        return matmul.fp32_precision == "tf32"
    return matmul.allow_tf32


def peak_flops(device: torch.device, dtype: torch.dtype, tf32: bool) -> float:
    """Peak FLOP/s of ``device`` for matmuls in ``dtype``.

    Listed GPUs: the vendor's dense figure for ``dtype`` (for fp32, the TF32 tensor-core peak
    when ``tf32`` is true, else the IEEE fp32 peak). Other accelerators: a measured
    ``ACCELERATOR_MATMUL_SIZE`` matmul rate in ``dtype``, under torch's current TF32 setting.
    CPU: a measured small matmul rate, the best estimate of what a CPU rank can reach.
    """
    if device.type == "cuda":
        peaks = gpu_dense_peaks(torch.cuda.get_device_name(device))
        if peaks is not None:
            return peaks.flops(dtype, tf32)
    size = cpu_matmul_size(dtype) if device.type == "cpu" else ACCELERATOR_MATMUL_SIZE
    return measured_matmul_flops(device, dtype, size)


def cpu_matmul_size(dtype: torch.dtype, seconds: float = MEASURE_SECONDS) -> int:
    """Square matmul size to measure on CPU: 1024, or 256 where a 256 matmul already takes a
    noticeable share of ``seconds`` (fp16 on most CPUs, where a single 1024 matmul takes seconds)."""
    small = torch.randn(256, 256, dtype=dtype)
    small @ small  # warm-up (library initialisation)
    return 1024 if timed_matmuls(small, small, count=1) < seconds / 30 else 256


def measured_matmul_flops(device: torch.device, dtype: torch.dtype, size: int,
                          seconds: float = MEASURE_SECONDS) -> float:
    """FLOP/s of repeated ``size`` x ``size`` matmuls in ``dtype`` on ``device`` for about ``seconds``."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    timed_matmuls(a, b, count=2)  # warm-up: library initialisation, algorithm choice, clocks
    count, elapsed = 0, 0.0
    while elapsed < seconds:
        elapsed += timed_matmuls(a, b, count=4)
        count += 4
    return 2.0 * size**3 * count / elapsed


def timed_matmuls(a: torch.Tensor, b: torch.Tensor, count: int) -> float:
    """Seconds that ``count`` products ``a @ b`` take, device work included."""
    synchronize = torch.get_device_module(a.device).synchronize
    synchronize(a.device)  # queued work (earlier matmuls, model set-up) is not ours to time
    start = time.perf_counter()
    for _ in range(count):
        a @ b
    synchronize(a.device)
    return time.perf_counter() - start
