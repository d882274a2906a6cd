"""Peak FLOP/s of the device, for the MFU estimate: a table for common GPUs, a measurement on CPU."""

import time

import torch

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched by device name.
GPU_BF16_PEAK = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("4090", 165e12),
    ("3090", 71e12),
    ("V100", 125e12),
)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Peak FLOP/s of ``device``: the table for known GPUs, else a measured matmul rate."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_BF16_PEAK:
            if key in name:
                return flops
    return measured_matmul_flops(device, dtype)


def measured_matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of repeated ``size x size`` matmuls on ``device`` for about ``seconds``."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2.0 * size**3 * count / (time.perf_counter() - start)
