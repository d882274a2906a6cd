"""Plain-PyTorch reference implementations of the fused ops.

These are MiniMind's formulas (see the project README) written with ordinary tensor
operations. They run on every device and are what ``impl="torch"`` selects.
"""

import torch


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm: ``weight * (x.float() * rsqrt(mean(x.float()^2, -1) + eps)).type_as(x)``.

    x: (..., hidden); weight: (hidden,). Returns a tensor shaped like ``x``.
    """
    normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.type_as(x)


def rms_norm_residual_torch(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm_torch(x + residual), x + residual)``; x, residual: (..., hidden)."""
    summed = x + residual
    return rms_norm_torch(summed, weight, eps), summed


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``cat(-x[..., d/2:], x[..., :d/2])`` over the last dimension."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    position_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE of q and k.

    q: (batch, seq, q_heads, head_dim); k: (batch, seq, kv_heads, head_dim);
    cos, sin: (positions, head_dim), of which rows ``position_offset .. position_offset+seq-1``
    apply. Returns ``(q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin)``.
    """
    seq = q.shape[1]
    cos = cos[position_offset : position_offset + seq].unsqueeze(1)  # (seq, 1, head_dim)
    sin = sin[position_offset : position_offset + seq].unsqueeze(1)
    q_rot = (q * cos) + (rotate_half(q) * sin)
    k_rot = (k * cos) + (rotate_half(k) * sin)
    return q_rot.to(q.dtype), k_rot.to(k.dtype)


def apply_rotary_at_positions_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE of q and k at each token's own position (packed sequences restart at 0).

    q, k as ``apply_rotary_torch``; cos, sin: (positions, head_dim); positions: (batch, seq) rows of them.
    Where ``positions`` counts offset, offset + 1, ... the result is ``apply_rotary_torch``'s.
    """
    cos = cos[positions].unsqueeze(2)  # (batch, seq, 1, head_dim)
    sin = sin[positions].unsqueeze(2)
    q_rot = (q * cos) + (rotate_half(q) * sin)
    k_rot = (k * cos) + (rotate_half(k) * sin)
    return q_rot.to(q.dtype), k_rot.to(k.dtype)
