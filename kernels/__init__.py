"""Fused RMSNorm and RoPE for MiniMind, with a PyTorch fallback.

Public API::

    kernels.rms_norm(x, weight, eps, impl="auto")
    kernels.rms_norm_residual(x, residual, weight, eps, impl="auto")  # -> (normed, x + residual)
    kernels.apply_rotary(q, k, cos, sin, position_offset=0, impl="auto")

``impl`` is ``auto`` (Triton on CUDA, PyTorch elsewhere), ``triton`` or ``torch``.

The Triton code lives in ``kernels.fused_rms_norm`` and ``kernels.rope`` and is imported
only when first used, so this package imports without Triton. (The RMSNorm module is not
called ``kernels.rms_norm``: importing a submodule of that name would rebind the attribute
``kernels.rms_norm`` from this function to the module.)

``torch.compile(fullgraph=True)`` traces these functions on either implementation without a
graph break: the choice between the two is made once per ``impl`` and device
(``kernels.dispatch``) and folded into the graph, and the Triton kernels enter it as custom
operators (``kernels.custom_ops``).
"""

import torch

from kernels.dispatch import IMPLEMENTATIONS, KernelUnavailableError, resolve_impl
from kernels.reference import apply_rotary_torch, rms_norm_residual_torch, rms_norm_torch

__all__ = [
    "IMPLEMENTATIONS",
    "KernelUnavailableError",
    "apply_rotary",
    "resolve_impl",
    "rms_norm",
    "rms_norm_residual",
]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, impl: str = "auto") -> torch.Tensor:
    """MiniMind RMSNorm of ``x`` (..., hidden) with ``weight`` (hidden,)."""
    if resolve_impl(impl, x.device) == "triton":
        from kernels.fused_rms_norm import rms_norm_triton

        return rms_norm_triton(x, weight, eps)
    return rms_norm_torch(x, weight, eps)


def rms_norm_residual(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, impl: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(x + residual), x + residual)`` for x, residual (..., hidden), fused on Triton."""
    if resolve_impl(impl, x.device) == "triton":
        from kernels.fused_rms_norm import rms_norm_residual_triton

        return rms_norm_residual_triton(x, residual, weight, eps)
    return rms_norm_residual_torch(x, residual, weight, eps)


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
