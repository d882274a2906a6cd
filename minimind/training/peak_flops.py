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


def measured_matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.3) -> float:
    """FLOP/s of repeated square matmuls on ``device`` for about ``seconds``.

    The size is 1024, or 256 where one 256 matmul already takes a noticeable share of the
    budget (fp16 on most CPUs, where a single 1024 matmul takes seconds).
    """
    small = torch.randn(256, 256, device=device, dtype=dtype)
    small @ small  # warm-up (library initialisation)
    size = 1024 if timed_matmuls(small, small, count=1) < seconds / 30 else 256
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    count, elapsed = 0, 0.0
    while elapsed < seconds:
        elapsed += timed_matmuls(a, b, count=4)
        count += 4
    return 2.0 * size**3 * count / elapsed


def timed_matmuls(a: torch.Tensor, b: torch.Tensor, count: int) -> float:
    """Seconds that ``count`` products ``a @ b`` take, device work included."""
    start = time.perf_counter()
    for _ in range(count):
        a @ b
    if a.device.type == "cuda":
        torch.cuda.synchronize(a.device)
    return time.perf_counter() - start
