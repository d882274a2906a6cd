"""Fused RMSNorm in Triton: forward, backward, the autograd Functions and the custom operators.

Math (MiniMind's, see ``minimind_kernels.reference.rms_norm_torch``), per row of ``x`` (..., hidden)::

    rstd   = rsqrt(mean(x.float()^2) + eps)              # fp32, saved for the backward
    normed = (x.float() * rstd).to(x.dtype)              # rounded to x's dtype first...
    y      = weight * normed                             # ...then scaled, in promote(weight, x) dtype

Backward, treating the cast as the identity (as autograd does), with ``gw = dy * weight``::

    dx     = rstd * (gw - xhat * mean(gw * xhat)),  xhat = x.float() * rstd
    dweight = sum over rows of dy * normed

Residual variant (``rms_norm_residual_triton``): the same kernels with a flag compute
``h = x + residual`` (rounded to the sum's dtype, as torch's addition does), store it, and
normalize h; the backward adds the gradient of h to the norm's input gradient and hands
the result to both x and residual.

Layout: the input is flattened to (rows, hidden). Rows may be strided (a view such as
``x[..., :hidden]`` is read in place), but the hidden dimension must have unit stride;
any other layout is copied with ``.contiguous()`` (by the forward and again by the backward,
which gets the input as it was given). Outputs are always contiguous.
Hidden sizes up to ``MAX_FUSED_HIDDEN`` are supported (one tile holds a whole row);
larger ones raise ``ValueError``.

The weight gradient is deterministic: each backward program reduces a fixed block of
rows into its own row of a (programs, hidden) fp32 buffer, and ``torch.sum`` reduces
that buffer. No atomics.

In-place policy: nothing is written in place. The forward returns a new tensor, and the
backward writes new gradient buffers rather than reusing ``dy``, because autograd may hand
the same gradient tensor to several consumers (e.g. both inputs of an addition).

Two ways in, one set of launchers: in eager mode the autograd Functions call the launchers
directly; while ``torch.compile`` traces them they call the custom operators
(``minimind_kernels.custom_ops``) ``minimind::rms_norm`` -> (y, rstd), ``minimind::rms_norm_residual``
-> (y, h, rstd) and ``minimind::rms_norm_backward`` -> (dh, dweight), one graph node each with a
fake implementation. (Registering the backward on the operators instead would send eager calls
through the dispatcher as well: 30 to 60 us more host time per call and its backward, measured
on CPU.)

Every buffer the launchers allocate comes from ``_empty``; the tests replace it with a
NaN-filling allocator so that an element a kernel forgets to write cannot go unnoticed.
"""

import functools
import math

import torch
import triton
import triton.language as tl

from minimind_kernels.custom_ops import kernel_op, wrap_triton
from minimind_kernels.device_guard import on_device_of

# One program holds a whole row in registers; beyond this the tile no longer fits.
MAX_FUSED_HIDDEN = 65536
# Tiles aim at this many elements: several short rows per tile, or one long row.
_TILE_ELEMENTS = 4096
_MAX_ROWS_PER_TILE = 16


def _empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocate an output buffer (the tests swap this for a NaN-filled allocator)."""
    return torch.empty(shape, dtype=dtype, device=device)


@triton.jit
def _rms_norm_fwd_kernel(
    x_ptr,  # (rows, hidden), row stride x_row_stride, unit column stride
    residual_ptr,  # (rows, hidden), row stride residual_row_stride; read only if HAS_RESIDUAL
    h_ptr,  # (rows, hidden) contiguous: x + residual, written if HAS_RESIDUAL; else x itself
    weight_ptr,  # (hidden,)
    y_ptr,  # (rows, hidden) contiguous, dtype promote(weight, h)
    rstd_ptr,  # (rows,) fp32
    x_row_stride,
    residual_row_stride,
    n_rows,
    n_cols,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """y = weight * (h * rsqrt(mean(h^2) + eps)).to(h.dtype) for BLOCK_M rows; stores rstd.

    h is x, or with HAS_RESIDUAL the sum x + residual rounded to h's dtype (and stored).
    """
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    col_mask = cols < n_cols
    mask = row_mask[:, None] & col_mask[None, :]

    h = tl.load(x_ptr + rows[:, None] * x_row_stride + cols[None, :], mask=mask, other=0.0)
    h = h.to(tl.float32)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + rows[:, None] * residual_row_stride + cols[None, :], mask=mask, other=0.0)
        # As torch's x + residual: one rounding to the sum's dtype, and the norm reads that.
        h_rounded = (h + residual.to(tl.float32)).to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + rows[:, None] * n_cols + cols[None, :], h_rounded, mask=mask)
        h = h_rounded.to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)

    rstd = tl.rsqrt(tl.sum(h * h, axis=1) / n_cols + eps)  # (BLOCK_M,)
    # MiniMind rounds the normalized row to the input's dtype before the weight multiplies it.
    normed = (h * rstd[:, None]).to(h_ptr.dtype.element_ty).to(tl.float32)
    y = w[None, :] * normed

    tl.store(y_ptr + rows[:, None] * n_cols + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows, rstd, mask=row_mask)


@triton.jit
def _rms_norm_bwd_kernel(
    dy_ptr,  # (rows, hidden), row stride dy_row_stride, unit column stride
    h_ptr,  # (rows, hidden) the forward normalized, row stride h_row_stride, unit column stride
    dsum_ptr,  # (rows, hidden) gradient of the x + residual output, read only if HAS_DSUM
    weight_ptr,  # (hidden,)
    rstd_ptr,  # (rows,) fp32, from the forward
    dh_ptr,  # (rows, hidden) contiguous, h's dtype
    dw_partial_ptr,  # (programs, hidden) fp32: one partial weight-gradient row per program
    dy_row_stride,
    h_row_stride,
    dsum_row_stride,
    n_rows,
    n_cols,
    rows_per_program,
    HAS_DSUM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dh (+ dsum) for rows [pid * rows_per_program, ...) and their partial sum of dy * normed."""
    pid = tl.program_id(0)
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    w = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)

    for block_start in range(row_start, row_end, BLOCK_M):
        rows = block_start + tl.arange(0, BLOCK_M)
        row_mask = rows < row_end
        mask = row_mask[:, None] & col_mask[None, :]

        h = tl.load(h_ptr + rows[:, None] * h_row_stride + cols[None, :], mask=mask, other=0.0)
        h = h.to(tl.float32)
        dy = tl.load(dy_ptr + rows[:, None] * dy_row_stride + cols[None, :], mask=mask, other=0.0)
        dy = dy.to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)

        hhat = h * rstd[:, None]
        gw = dy * w[None, :]
        mean_gw_hhat = tl.sum(gw * hhat, axis=1) / n_cols
        dh = rstd[:, None] * (gw - hhat * mean_gw_hhat[:, None])
        if HAS_DSUM:
            dsum = tl.load(dsum_ptr + rows[:, None] * dsum_row_stride + cols[None, :], mask=mask, other=0.0)
            dh += dsum.to(tl.float32)
        tl.store(dh_ptr + rows[:, None] * n_cols + cols[None, :], dh.to(dh_ptr.dtype.element_ty), mask=mask)

        # The forward multiplied the weight by the normalized row as rounded to h's dtype.
        normed = hhat.to(h_ptr.dtype.element_ty).to(tl.float32)
        dw_acc += tl.sum(dy * normed, axis=0)

    tl.store(dw_partial_ptr + pid.to(tl.int64) * n_cols + cols, dw_acc, mask=col_mask)


def _num_warps(tile_elements: int) -> int:
    if tile_elements >= 32768:
        return 32
    if tile_elements >= 8192:
        return 16
    if tile_elements >= 2048:
        return 8
    return 4


def _block_n(hidden: int) -> int:
    if hidden < 1:
        raise ValueError(f"rms_norm_triton needs a hidden size of at least 1, got {hidden}")
    if hidden > MAX_FUSED_HIDDEN:
        raise ValueError(f"rms_norm_triton supports hidden sizes up to {MAX_FUSED_HIDDEN}, got {hidden}")
    return triton.next_power_of_2(hidden)


def _rows_per_tile(block_n: int, n_rows: int) -> int:
    """Rows per tile: enough short rows to fill ~_TILE_ELEMENTS values, one long row alone."""
    return max(1, min(_MAX_ROWS_PER_TILE, _TILE_ELEMENTS // block_n, triton.next_power_of_2(n_rows)))


@functools.cache
def _backward_programs(device: torch.device) -> int:
    """How many programs share the backward: a few per SM on CUDA, a handful when interpreted."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _as_rows(t: torch.Tensor, hidden: int) -> torch.Tensor:
    """View ``t`` (..., hidden) as (rows, hidden) with unit column stride, copying only if needed."""
    rows = t.reshape(-1, hidden)
    if rows.stride(1) != 1 and hidden > 1:
        rows = rows.contiguous()
    return rows


def _forward_outputs(
    x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Check the forward's arguments and allocate its outputs ``(y, h, rstd)``, all contiguous.

    y: x's shape in ``promote_types(weight.dtype, h.dtype)``; h: the sum x + residual in their
    promoted dtype, None without a residual; rstd: (rows,) fp32. The launcher and the fake
    implementations share this, so compiled graphs see exactly the shapes the kernels write.
    """
    hidden = x.shape[-1]
    _block_n(hidden)  # raises for hidden sizes the kernels do not support
    if weight.shape != (hidden,):
        raise ValueError(f"weight must have shape ({hidden},), got {tuple(weight.shape)}")
    h = None
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
        h = _empty(x.shape, torch.promote_types(x.dtype, residual.dtype), x.device)
    h_dtype = x.dtype if h is None else h.dtype
    y = _empty(x.shape, torch.promote_types(weight.dtype, h_dtype), x.device)
    rstd = _empty((math.prod(x.shape[:-1]),), torch.float32, x.device)
    return y, h, rstd


def rms_norm_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    kernel=_rms_norm_fwd_kernel,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward kernel (``kernel``: it, or an operator's traceable wrapper of it).

    x: (..., hidden); weight: (hidden,); residual: None, or shaped like x. The row normalized
    is h = x, or h = x + residual (in their promoted dtype). Returns ``(y, h, rstd)``: y shaped
    like x in ``promote_types(weight.dtype, h.dtype)``; h (x itself without a residual, else a
    new contiguous tensor); rstd (rows,) fp32.
    """
    y, h, rstd = _forward_outputs(x, weight, residual)
    hidden = x.shape[-1]
    x_rows = _as_rows(x, hidden)  # (rows, hidden)
    n_rows = x_rows.shape[0]
    residual_rows = x_rows if residual is None else _as_rows(residual, hidden)
    h_rows = x_rows if h is None else h.view(n_rows, hidden)
    if n_rows > 0:
        block_n = _block_n(hidden)
        block_m = _rows_per_tile(block_n, n_rows)
        with on_device_of(x_rows):
            kernel[(triton.cdiv(n_rows, block_m),)](
                x_rows,
                residual_rows,
                h_rows,
                weight.contiguous(),
                y,
                rstd,
                x_rows.stride(0),
                residual_rows.stride(0),
                n_rows,
                hidden,
                eps,
                HAS_RESIDUAL=residual is not None,
                BLOCK_M=block_m,
                BLOCK_N=block_n,
                num_warps=_num_warps(block_m * block_n),
            )
    return y, (x if h is None else h), rstd


def rms_norm_backward(
    dy: torch.Tensor,
    h: torch.Tensor,
    weight: torch.Tensor,
    rstd: torch.Tensor,
    dsum: torch.Tensor | None = None,
    kernel=_rms_norm_bwd_kernel,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward kernel (``kernel``: it, or an operator's traceable wrapper of it).

    dy: (..., hidden) gradient of y; h: (..., hidden) the row the forward normalized and rstd:
    (rows,) as returned by ``rms_norm_forward``; weight: (hidden,); dsum: None, or the gradient
    of the returned sum h, added to the result. Returns ``(dh, dweight)``: dh contiguous, shaped
    like h in h's dtype, and dweight (hidden,) in weight's dtype.
    """
    hidden = h.shape[-1]
    block_n = _block_n(hidden)
    h_rows = _as_rows(h, hidden)  # (rows, hidden); a copy only for a layout the forward copied too
    n_rows = h_rows.shape[0]
    dy_rows = _as_rows(dy, hidden)  # (rows, hidden)
    dsum_rows = dy_rows if dsum is None else _as_rows(dsum, hidden)
    weight = weight.contiguous()
    dh = _empty(h.shape, h.dtype, h.device)  # contiguous
    if n_rows == 0:
        return dh, torch.zeros_like(weight)
    block_m = _rows_per_tile(block_n, n_rows)
    rows_per_program = triton.cdiv(n_rows, _backward_programs(h.device))
    n_programs = triton.cdiv(n_rows, rows_per_program)
    dw_partial = _empty((n_programs, hidden), torch.float32, h.device)
    with on_device_of(h_rows):
        kernel[(n_programs,)](
            dy_rows,
            h_rows,
            dsum_rows,
            weight,
            rstd,
            dh,
            dw_partial,
            dy_rows.stride(0),
            h_rows.stride(0),
            dsum_rows.stride(0),
            n_rows,
            hidden,
            rows_per_program,
            HAS_DSUM=dsum is not None,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            num_warps=_num_warps(block_m * block_n),
        )
    return dh, dw_partial.sum(dim=0).to(weight.dtype)


@kernel_op("rms_norm")
def rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, rstd)``: RMSNorm of x (..., hidden) with weight (hidden,), and each row's fp32 rstd."""
    y, _, rstd = rms_norm_forward(x, weight, eps, kernel=wrap_triton(_rms_norm_fwd_kernel))
    return y, rstd


@kernel_op("rms_norm_residual")
def rms_norm_residual_op(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, h, rstd)``: RMSNorm y of h = x + residual, h itself, and each row's fp32 rstd."""
    return rms_norm_forward(x, weight, eps, residual, kernel=wrap_triton(_rms_norm_fwd_kernel))


@kernel_op("rms_norm_backward")
def rms_norm_backward_op(
    dy: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, dsum: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dh, dweight)`` of either forward, see ``rms_norm_backward``."""
    return rms_norm_backward(dy, h, weight, rstd, dsum, kernel=wrap_triton(_rms_norm_bwd_kernel))


@rms_norm_op.register_fake
def _rms_norm_fake(x, weight, eps):
    y, _, rstd = _forward_outputs(x, weight, None)
    return y, rstd


@rms_norm_residual_op.register_fake
def _rms_norm_residual_fake(x, residual, weight, eps):
    return _forward_outputs(x, weight, residual)


@rms_norm_backward_op.register_fake
def _rms_norm_backward_fake(dy, h, weight, rstd, dsum):
    return _empty(h.shape, h.dtype, h.device), _empty(weight.shape, weight.dtype, weight.device)


def _forward(x, weight, eps, residual):
    """``rms_norm_forward``'s ``(y, h, rstd)``: through the operators while torch.compile traces."""
    if not torch.compiler.is_compiling():
        return rms_norm_forward(x, weight, eps, residual)
    if residual is None:
        y, rstd = rms_norm_op(x, weight, eps)
        return y, x, rstd
    return rms_norm_residual_op(x, residual, weight, eps)


def _backward(dy, h, weight, rstd, dsum):
    """``rms_norm_backward``'s ``(dh, dweight)``: through the operator while torch.compile traces."""
    if torch.compiler.is_compiling():
        return rms_norm_backward_op(dy, h, weight, rstd, dsum)
    return rms_norm_backward(dy, h, weight, rstd, dsum)


class RMSNormFunction(torch.autograd.Function):
    """Autograd wrapper: saves x (the row normalized), weight and the per-row rstd."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        y, _, rstd = _forward(x, weight, eps, None)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        dx, dweight = _backward(dy, x, weight, rstd, None)
        return dx, dweight, None


class RMSNormResidualFunction(torch.autograd.Function):
    """Autograd wrapper of the residual-add variant: saves the sum h, weight and rstd."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
        y, h, rstd = _forward(x, weight, eps, residual)
        ctx.save_for_backward(h, weight, rstd)
        ctx.input_dtypes = (x.dtype, residual.dtype)
        ctx.set_materialize_grads(False)  # an unused sum output costs no extra read
        return y, h

    @staticmethod
    def backward(ctx, dy: torch.Tensor | None, dsum: torch.Tensor | None):
        h, weight, rstd = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(h, dtype=torch.promote_types(weight.dtype, h.dtype))
        dh, dweight = _backward(dy, h, weight, rstd, dsum)
        x_dtype, residual_dtype = ctx.input_dtypes
        # d(x + residual)/dx = d/dresidual = 1: both get dh, as torch's addition hands them.
        return dh.to(x_dtype), dh.to(residual_dtype), dweight, None


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """MiniMind RMSNorm of x (..., hidden) with weight (hidden,), differentiable in both."""
    return RMSNormFunction.apply(x, weight, eps)


def rms_norm_residual_triton(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(x + residual), x + residual)`` in one pass; x, residual: (..., hidden)."""
    return RMSNormResidualFunction.apply(x, residual, weight, eps)
