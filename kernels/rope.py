"""Rotate-half rotary position embedding in Triton, q and k in one launch.

Math (MiniMind's, see ``minimind_kernels.reference.apply_rotary_torch``), with ``x = cat(x1, x2)``
split at half of head_dim and ``c = cat(c1, c2)``, ``s = cat(s1, s2)`` the table rows for
the token's position::

    forward:  out = x * c + rotate_half(x) * s,  rotate_half(x) = cat(-x2, x1)
              out1 = x1 * c1 - x2 * s1,  out2 = x2 * c2 + x1 * s2
    backward: dx = g * c + rotate_half^T(g * s),  rotate_half^T(y) = cat(y2, -y1)
              dx1 = g1 * c1 + g2 * s2,   dx2 = g2 * c2 - g1 * s1

Both halves of the tables are read, so any (positions, head_dim) tables work, not only
``cat(f, f)`` ones. Arithmetic is fp32; outputs take the dtype of their input.

Shapes: q (batch, seq, q_heads, head_dim), k (batch, seq, kv_heads, head_dim) with any
head counts (GQA); cos, sin (positions, head_dim), of which rows
``position_offset .. position_offset + seq - 1`` apply (KV-cache decoding). One program
handles a few consecutive (batch, position) pairs: it loads their table rows once and
rotates every q head and every k head there.

Layout: q, k and their gradients are read through their strides (the model passes views
of projection outputs), so only a head_dim with non-unit stride forces a copy.
Outputs are new contiguous tensors.

In-place policy: nothing is written in place. The forward returns new tensors (the
PyTorch reference leaves q and k untouched, and callers may still need them). The backward
writes new buffers instead of the incoming gradients, because autograd may give the same
gradient tensor to several consumers (``q_rot + bias`` hands one tensor to both inputs)
or a stride-0 expanded one (``q_rot.sum()``), and overwriting either corrupts other
gradients; the extra buffer costs memory, not bandwidth.

The autograd Function calls the launcher directly in eager mode, and the custom operators
(``minimind_kernels.custom_ops``) ``minimind::rotary`` and ``minimind::rotary_backward`` while
``torch.compile`` traces it (see ``minimind_kernels.fused_rms_norm`` for why).

No gradient flows to cos and sin: they are constant tables, and ``apply_rotary_triton``
refuses tables that require grad.

Every buffer the launchers allocate comes from ``_empty``; the tests replace it with a
NaN-filling allocator so that an element a kernel forgets to write cannot go unnoticed.
"""

import torch
import triton
import triton.language as tl

from minimind_kernels.custom_ops import kernel_op, wrap_triton
from minimind_kernels.device_guard import on_device_of

# Each program rotates all heads of up to _MAX_POSITIONS_PER_TILE positions, ~_TILE_ELEMENTS values.
_TILE_ELEMENTS = 4096
_MAX_POSITIONS_PER_TILE = 16


def _empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocate an output buffer (the tests swap this for a NaN-filled allocator)."""
    return torch.empty(shape, dtype=dtype, device=device)


@triton.jit
def _rotate_heads(
    x_ptr,  # (batch, seq, heads, head_dim), unit stride on head_dim
    out_ptr,  # (batch, seq, heads, head_dim) contiguous
    x_position_offsets,  # (BLOCK_S,) int64: b * stride_b + s * stride_s of each position in the tile
    positions,  # (BLOCK_S,) int64: flat index b * seq + s of each position in the tile
    position_mask,  # (BLOCK_S,)
    x_head_stride,
    n_heads,
    half_dim,
    c1,
    c2,
    s1,
    s2,  # (BLOCK_S, BLOCK_D) fp32 table halves of each position
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BACKWARD: tl.constexpr,
):
    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_D)
    mask = position_mask[:, None, None] & (heads[None, :, None] < n_heads) & (dims[None, None, :] < half_dim)
    x_offsets = x_position_offsets[:, None, None] + heads[None, :, None] * x_head_stride + dims[None, None, :]
    out_rows = positions[:, None, None] * n_heads + heads[None, :, None]  # contiguous output
    out_offsets = out_rows * (2 * half_dim) + dims[None, None, :]
    c1 = c1[:, None, :]
    c2 = c2[:, None, :]
    s1 = s1[:, None, :]
    s2 = s2[:, None, :]

    x1 = tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + x_offsets + half_dim, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:
        out1 = x1 * c1 + x2 * s2
        out2 = x2 * c2 - x1 * s1
    else:
        out1 = x1 * c1 - x2 * s1
        out2 = x2 * c2 + x1 * s2
    out_ty = out_ptr.dtype.element_ty
    tl.store(out_ptr + out_offsets, out1.to(out_ty), mask=mask)
    tl.store(out_ptr + out_offsets + half_dim, out2.to(out_ty), mask=mask)


@triton.jit
def _rope_kernel(
    q_ptr,  # (batch, seq, q_heads, head_dim), strided, unit stride on head_dim
    k_ptr,  # (batch, seq, kv_heads, head_dim), strided, unit stride on head_dim
    q_out_ptr,  # (batch, seq, q_heads, head_dim) contiguous
    k_out_ptr,  # (batch, seq, kv_heads, head_dim) contiguous
    cos_ptr,  # (positions, head_dim), row stride cos_row_stride
    sin_ptr,  # (positions, head_dim), row stride sin_row_stride
    q_stride_b,
    q_stride_s,
    q_stride_h,
    k_stride_b,
    k_stride_s,
    k_stride_h,
    cos_row_stride,
    sin_row_stride,
    n_positions,  # batch * seq
    seq_len,
    position_offset,
    n_q_heads,
    n_kv_heads,
    half_dim,
    BLOCK_S: tl.constexpr,
    BLOCK_QH: tl.constexpr,
    BLOCK_KH: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BACKWARD: tl.constexpr,
):
    """Rotate (or, with BACKWARD, counter-rotate) every q and k head at BLOCK_S (batch, seq) positions."""
    positions = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    position_mask = positions < n_positions
    b = positions // seq_len
    s = positions % seq_len

    dims = tl.arange(0, BLOCK_D)
    table_mask = position_mask[:, None] & (dims[None, :] < half_dim)
    cos_rows = cos_ptr + (position_offset + s)[:, None] * cos_row_stride + dims[None, :]
    sin_rows = sin_ptr + (position_offset + s)[:, None] * sin_row_stride + dims[None, :]
    c1 = tl.load(cos_rows, mask=table_mask, other=0.0).to(tl.float32)
    c2 = tl.load(cos_rows + half_dim, mask=table_mask, other=0.0).to(tl.float32)
    s1 = tl.load(sin_rows, mask=table_mask, other=0.0).to(tl.float32)
    s2 = tl.load(sin_rows + half_dim, mask=table_mask, other=0.0).to(tl.float32)

    _rotate_heads(
        q_ptr,
        q_out_ptr,
        b * q_stride_b + s * q_stride_s,
        positions,
        position_mask,
        q_stride_h,
        n_q_heads,
        half_dim,
        c1,
        c2,
        s1,
        s2,
        BLOCK_QH,
        BLOCK_D,
        BACKWARD,
    )
    _rotate_heads(
        k_ptr,
        k_out_ptr,
        b * k_stride_b + s * k_stride_s,
        positions,
        position_mask,
        k_stride_h,
        n_kv_heads,
        half_dim,
        c1,
        c2,
        s1,
        s2,
        BLOCK_KH,
        BLOCK_D,
        BACKWARD,
    )


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _check_shapes(q, k, cos, sin, position_offset: int) -> None:
    """Raise ValueError, in one line, for arguments the kernel cannot rotate."""
    if q.dim() != 4 or k.dim() != 4:
        shapes = f"{tuple(q.shape)} and {tuple(k.shape)}"
        raise ValueError(f"q and k must be (batch, seq, heads, head_dim), got {shapes}")
    batch, seq, _, head_dim = q.shape
    if k.shape[0] != batch or k.shape[1] != seq or k.shape[3] != head_dim:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} differ outside the head count")
    if head_dim % 2:
        raise ValueError(f"rotate-half RoPE needs an even head_dim, got {head_dim}")
    if cos.dim() != 2 or cos.shape != sin.shape or cos.shape[1] != head_dim:
        raise ValueError(
            f"cos and sin must both be (positions, {head_dim}), got {tuple(cos.shape)} and {tuple(sin.shape)}"
        )
    if position_offset < 0 or position_offset + seq > cos.shape[0]:
        last = position_offset + seq - 1
        raise ValueError(f"positions {position_offset}..{last} fall outside the {cos.shape[0]}-row tables")
    if not (q.device == k.device == cos.device == sin.device):
        devices = ", ".join(str(t.device) for t in (q, k, cos, sin))
        raise ValueError(f"q, k, cos and sin must share a device, got {devices}")


def _rope_outputs(q, k, cos, sin, position_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the arguments and allocate the outputs: new contiguous tensors shaped and typed like q and k.

    The launcher and the fake implementations share this, so compiled graphs see what the kernel writes.
    """
    _check_shapes(q, k, cos, sin, position_offset)
    return _empty(q.shape, q.dtype, q.device), _empty(k.shape, k.dtype, k.device)


def rope_launch(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    position_offset: int,
    backward: bool,
    kernel=_rope_kernel,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k (or counter-rotate their gradients when ``backward``) in one launch of
    ``kernel`` (``_rope_kernel``, or an operator's traceable wrapper of it).

    q: (batch, seq, q_heads, head_dim); k: (batch, seq, kv_heads, head_dim); cos, sin:
    (positions, head_dim). Returns new contiguous tensors shaped and typed like q and k.
    """
    q_out, k_out = _rope_outputs(q, k, cos, sin, position_offset)
    q = _unit_last_stride(q)
    k = _unit_last_stride(k)
    cos = _unit_last_stride(cos)
    sin = _unit_last_stride(sin)
    batch, seq, n_q_heads, head_dim = q.shape
    n_kv_heads = k.shape[2]
    if batch * seq == 0:
        return q_out, k_out
    half_dim = head_dim // 2
    n_positions = batch * seq
    block_d = triton.next_power_of_2(half_dim)
    block_qh = triton.next_power_of_2(n_q_heads)
    block_kh = triton.next_power_of_2(max(n_kv_heads, 1))
    # Several positions per program when heads are few and short, so each tile holds ~4k elements.
    per_position = (block_qh + block_kh) * block_d
    max_block_s = min(_MAX_POSITIONS_PER_TILE, n_positions)
    block_s = 1
    while block_s < max_block_s and 2 * block_s * per_position <= _TILE_ELEMENTS:
        block_s *= 2
    with on_device_of(q):
        kernel[(triton.cdiv(n_positions, block_s),)](
            q,
            k,
            q_out,
            k_out,
            cos,
            sin,
            *q.stride()[:3],
            *k.stride()[:3],
            cos.stride(0),
            sin.stride(0),
            n_positions,
            seq,
            position_offset,
            n_q_heads,
            n_kv_heads,
            half_dim,
            BLOCK_S=block_s,
            BLOCK_QH=block_qh,
            BLOCK_KH=block_kh,
            BLOCK_D=block_d,
            BACKWARD=backward,
            num_warps=4 if block_s * per_position <= 4096 else 8,
        )
    return q_out, k_out


@kernel_op("rotary")
def rotary_op(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, position_offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin)`` at the offset positions."""
    return rope_launch(q, k, cos, sin, position_offset, backward=False, kernel=wrap_triton(_rope_kernel))


@kernel_op("rotary_backward")
def rotary_backward_op(
    dq: torch.Tensor, dk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, position_offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of q and k from those of the rotated outputs: rotation by the negative angle."""
    return rope_launch(dq, dk, cos, sin, position_offset, backward=True, kernel=wrap_triton(_rope_kernel))


rotary_op.register_fake(_rope_outputs)
rotary_backward_op.register_fake(_rope_outputs)


def _rotate(q, k, cos, sin, position_offset: int, backward: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``rope_launch``: through the operators while torch.compile traces."""
    if torch.compiler.is_compiling():
        op = rotary_backward_op if backward else rotary_op
        return op(q, k, cos, sin, position_offset)
    return rope_launch(q, k, cos, sin, position_offset, backward)


class RotaryFunction(torch.autograd.Function):
    """Autograd wrapper: saves only the tables (a rotation's backward needs no activations)."""

    @staticmethod
    def forward(ctx, q, k, cos, sin, position_offset: int):
        q_rot, k_rot = _rotate(q, k, cos, sin, position_offset, backward=False)
        ctx.save_for_backward(cos, sin)
        ctx.position_offset = position_offset
        return q_rot, k_rot

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        dq_in, dk_in = _rotate(dq, dk, cos, sin, ctx.position_offset, backward=True)
        return dq_in, dk_in, None, None, None


def apply_rotary_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    position_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE of q (batch, seq, q_heads, head_dim) and k (batch, seq, kv_heads, head_dim).

    cos, sin: (positions, head_dim) tables; rows ``position_offset .. position_offset+seq-1``
    apply. Differentiable in q and k; returns new tensors in q's and k's dtypes.
    """
    if torch.is_grad_enabled() and (cos.requires_grad or sin.requires_grad):
        raise ValueError("apply_rotary_triton does not differentiate through cos/sin; pass constant tables")
    return RotaryFunction.apply(q, k, cos, sin, position_offset)
