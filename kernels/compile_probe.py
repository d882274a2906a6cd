"""A tiny Triton kernel that proves Triton can compile and run on a CUDA device.

Triton builds a small C launcher the first time it compiles a kernel, so a container
without a C compiler, or a machine with a broken driver, imports Triton fine and fails
only at the first launch. ``minimind_kernels.dispatch`` runs ``run_compile_probe`` once per device
before ``--kernels auto`` picks Triton, and imports this module only then, so the package
still imports without Triton.
"""

import torch
import triton
import triton.language as tl

from minimind_kernels.device_guard import on_device_of

_PROBE_ELEMENTS = 16


@triton.jit
def _copy_kernel(src_ptr, dst_ptr, n_elements, BLOCK: tl.constexpr):
    """dst[i] = src[i] for i < n_elements; src, dst: (n_elements,) in one program."""
    offsets = tl.arange(0, BLOCK)
    mask = offsets < n_elements
    tl.store(dst_ptr + offsets, tl.load(src_ptr + offsets, mask=mask), mask=mask)


def run_compile_probe(device: torch.device) -> None:
    """Compile and launch ``_copy_kernel`` on ``device``; raise if that fails or copies wrongly."""
    src = torch.arange(_PROBE_ELEMENTS, dtype=torch.float32, device=device)
    dst = torch.zeros_like(src)
    with on_device_of(src):
        _copy_kernel[(1,)](src, dst, _PROBE_ELEMENTS, BLOCK=_PROBE_ELEMENTS)
    # CPU-GPU sync: a failed launch on a broken driver surfaces here, not at a later forward.
    if not torch.equal(dst, src):
        raise RuntimeError(f"the probe kernel copied {dst.tolist()} instead of {src.tolist()}")
