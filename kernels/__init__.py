"""Fused RMSNorm and RoPE for MiniMind, with a PyTorch fallback.

Public API::

    kernels.rms_norm(x, weight, eps, impl="auto")
    kernels.apply_rotary(q, k, cos, sin, position_offset=0, impl="auto")

``impl`` is ``auto`` (Triton on CUDA, PyTorch elsewhere), ``triton`` or ``torch``.
"""

import torch

from kernels.dispatch import IMPLEMENTATIONS, KernelUnavailableError, resolve_impl
from kernels.reference import apply_rotary_torch, rms_norm_torch

__all__ = ["IMPLEMENTATIONS", "KernelUnavailableError", "apply_rotary", "resolve_impl", "rms_norm"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, impl: str = "auto") -> torch.Tensor:
    """MiniMind RMSNorm of ``x`` (..., hidden) with ``weight`` (hidden,)."""
    if resolve_impl(impl, x.device) == "triton":
        from kernels.rms_norm import rms_norm_triton

        return rms_norm_triton(x, weight, eps)
    return rms_norm_torch(x, weight, eps)


def apply_rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    position_offset: int = 0,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE of q (batch, seq, q_heads, head_dim) and k (batch, seq, kv_heads, head_dim)."""
    if resolve_impl(impl, q.device) == "triton":
        from kernels.rope import apply_rotary_triton

        return apply_rotary_triton(q, k, cos, sin, position_offset)
    return apply_rotary_torch(q, k, cos, sin, position_offset)
