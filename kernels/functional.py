"""Fused RMSNorm and RoPE for MiniMind, with a PyTorch fallback: the kernels' public functions.

The folder ``kernels/`` is imported as ``minimind_kernels`` (a namespace package: the folder has
no ``__init__.py``; ``pyproject.toml`` maps the name to the folder). The reason: Hugging Face's
own ``kernels`` distribution, which ``transformers`` imports, owns the import name ``kernels``;
a package of ours under that name, first on ``sys.path`` from the repository root, would shadow
it and break every import of ``transformers``. Without an ``__init__.py`` the folder is at most a
namespace portion, which any installed ``kernels`` package takes precedence over. Use::

    from minimind_kernels import functional as kernel_ops

    kernel_ops.rms_norm(x, weight, eps, impl="auto")
    kernel_ops.rms_norm_residual(x, residual, weight, eps, impl="auto")  # -> (normed, x + residual)
    kernel_ops.apply_rotary(q, k, cos, sin, position_offset=0, impl="auto")

``impl`` is ``auto`` (Triton on CUDA, PyTorch elsewhere), ``triton`` or ``torch``
(``minimind_kernels.dispatch``).

The Triton code lives in ``minimind_kernels.fused_rms_norm`` and ``minimind_kernels.rope`` and is
imported only when first used, so this module imports without Triton. (The RMSNorm module is not
called ``rms_norm``: a submodule of that name beside this module's function invites confusion.)

``torch.compile(fullgraph=True)`` traces these functions on either implementation without a
graph break: the choice between the two is made once per ``impl`` and device
(``minimind_kernels.dispatch``) and folded into the graph, and the Triton kernels enter it as
custom operators (``minimind_kernels.custom_ops``).
"""

import torch

from minimind_kernels.dispatch import resolve_impl
from minimind_kernels.reference import (
    apply_rotary_at_positions_torch,
    apply_rotary_torch,
    rms_norm_residual_torch,
    rms_norm_torch,
)

__all__ = ["apply_rotary", "apply_rotary_at_positions", "rms_norm", "rms_norm_residual"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, impl: str = "auto") -> torch.Tensor:
    """MiniMind RMSNorm of ``x`` (..., hidden) with ``weight`` (hidden,)."""
    if resolve_impl(impl, x.device) == "triton":
        from minimind_kernels.fused_rms_norm import rms_norm_triton

        return rms_norm_triton(x, weight, eps)
    return rms_norm_torch(x, weight, eps)


def rms_norm_residual(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, impl: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(x + residual), x + residual)`` for x, residual (..., hidden), fused on Triton."""
    if resolve_impl(impl, x.device) == "triton":
        from minimind_kernels.fused_rms_norm import rms_norm_residual_triton

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
        from minimind_kernels.rope import apply_rotary_triton

        return apply_rotary_triton(q, k, cos, sin, position_offset)
    return apply_rotary_torch(q, k, cos, sin, position_offset)


def apply_rotary_at_positions(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE of q and k (as ``apply_rotary``) at each token's own position, ``positions`` (batch,
    seq): packed sequences restart at 0. The PyTorch path on every device (the Triton kernel takes one offset)."""
    return apply_rotary_at_positions_torch(q, k, cos, sin, positions)
