"""The Triton RMSNorm against a float64 reference written here, forward and backward.

Runs interpreted on CPU (``TRITON_INTERPRET=1``, set by conftest.py) or compiled on CUDA
(``TRITON_INTERPRET=0``). Every buffer the launchers allocate is filled with NaN first, so
an element a kernel fails to write fails the comparison.
"""

import pytest
import torch

pytest.importorskip("triton")

from minimind_kernels import functional as kernel_ops  # noqa: E402
from minimind_kernels import fused_rms_norm  # noqa: E402
from minimind_kernels.dispatch import triton_interpreted  # noqa: E402
from minimind_kernels.fused_rms_norm import (  # noqa: E402
    MAX_FUSED_HIDDEN,
    rms_norm_backward,
    rms_norm_forward,
    rms_norm_residual_triton,
    rms_norm_triton,
)
from minimind_kernels.reference import rms_norm_residual_torch  # noqa: E402
from tests.conftest import nan_filled_empty  # noqa: E402

EPS = 1e-5
HIDDEN_SIZES = [1, 7, 64, 96, 511, 4097]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# Error of one rounding to each dtype, relative to the exact value. fp16 rounds to nearest
# (half an ulp: 2^-11). bf16 gets a whole ulp (2^-7), not half: the Triton interpreter
# truncates fp32 -> bf16 casts (triton/runtime/interpreter.py, cast_impl) where GPUs round
# to nearest. fp32 gets 1e-5 for the fp32 arithmetic (rsqrt, row sums of up to 4097 squares).
ROUNDING = {torch.float32: 1e-5, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-11}
FP32_SLACK = 1e-5


@pytest.fixture(autouse=True)
def nan_buffers(monkeypatch):
    """Fill every buffer the launchers allocate with NaN, so unwritten elements show up."""
    monkeypatch.setattr(fused_rms_norm, "_empty", nan_filled_empty)


def rms_norm_ref64(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact RMSNorm in float64, without MiniMind's intermediate rounding to x's dtype."""
    x = x.double()
    return weight.double() * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def reference_grads(x, weight, dy, eps):
    """float64 (y, dx, dweight, dweight_scale); the scale sums |dy * normed| over rows."""
    x64 = x.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    y64 = rms_norm_ref64(x64, w64, eps)
    y64.backward(dy.double())
    normed = x64.detach() * torch.rsqrt(x64.detach().pow(2).mean(-1, keepdim=True) + eps)
    scale = (dy.double() * normed).abs().reshape(-1, x.shape[-1]).sum(0)
    return y64.detach(), x64.grad, w64.grad, scale


def run_triton(x, weight, dy, eps=EPS):
    x = x.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    y = rms_norm_triton(x, weight, eps)
    y.backward(dy)
    return y.detach(), x.grad, weight.grad


def make_inputs(shape, x_dtype, w_dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = shape[-1]
    x = torch.randn(shape, generator=gen).to(device=device, dtype=x_dtype)
    weight = (1.0 + 0.5 * torch.randn(hidden, generator=gen)).to(device=device, dtype=w_dtype)
    out_dtype = torch.promote_types(w_dtype, x_dtype)
    dy = torch.randn(shape, generator=gen).to(device=device, dtype=out_dtype)
    return x, weight, dy


def check_against_reference(x, weight, dy, eps=EPS):
    y, dx, dw = run_triton(x, weight, dy, eps)
    y_ref, dx_ref, dw_ref, dw_scale = reference_grads(x, weight, dy, eps)

    assert y.dtype == torch.promote_types(weight.dtype, x.dtype)
    assert dx.dtype == x.dtype and dw.dtype == weight.dtype
    for name, t in (("y", y), ("dx", dx), ("dweight", dw)):
        assert torch.isfinite(t).all(), f"{name} has non-finite elements"

    x_round = ROUNDING[x.dtype]
    out_round = ROUNDING[y.dtype]
    # y: normed is rounded to x's dtype, then the product to y's dtype.
    torch.testing.assert_close(y.double(), y_ref, rtol=x_round + out_round + FP32_SLACK, atol=1e-6)
    # dx: fp32 arithmetic (absolute slack covers cancellation, e.g. hidden 1), one rounding to x's dtype.
    torch.testing.assert_close(dx.double(), dx_ref, rtol=x_round + FP32_SLACK, atol=FP32_SLACK)
    # dweight: each term uses normed rounded to x's dtype, fp32 sums, one rounding to weight's dtype.
    err = (dw.double() - dw_ref).abs()
    bound = (x_round + FP32_SLACK) * dw_scale + ROUNDING[weight.dtype] * dw_ref.abs() + 1e-6
    assert (err <= bound).all(), f"dweight off by up to {(err / bound).max().item():.2f}x its bound"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", HIDDEN_SIZES)
def test_forward_backward_matches_float64(hidden, dtype, device):
    # 33 rows in (3, 11, hidden): not a multiple of any row block, and 4 uneven backward programs.
    check_against_reference(*make_inputs((3, 11, hidden), dtype, dtype, device))


@pytest.mark.parametrize("hidden", [1, 511, 4097])
def test_single_row(hidden, device):
    check_against_reference(*make_inputs((1, hidden), torch.float32, torch.float32, device))


@pytest.mark.parametrize(
    "rows, hidden, dtype",
    [(2500, 7, torch.float32), (3001, 64, torch.bfloat16), (2048, 96, torch.float16)],
    ids=str,
)
def test_many_rows(rows, hidden, dtype, device):
    # Thousands of rows only at small hidden sizes: the interpreter is slow.
    check_against_reference(*make_inputs((rows, hidden), dtype, dtype, device, seed=rows))


@pytest.mark.parametrize(
    "x_dtype, w_dtype",
    [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16), (torch.float16, torch.bfloat16)],
    ids=str,
)
def test_mixed_dtypes_promote_like_torch(x_dtype, w_dtype, device):
    check_against_reference(*make_inputs((5, 96), x_dtype, w_dtype, device))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_minimind_formula(dtype, device):
    """Against MiniMind's own formula in its own precision (normed rounded before the weight)."""
    x, weight, _ = make_inputs((4, 9, 96), dtype, dtype, device)
    y = kernel_ops.rms_norm(x, weight, EPS, impl="triton")
    expected = weight * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + EPS)).type_as(x)
    assert y.dtype == expected.dtype
    # Each side is within two roundings (normed, product) of the exact value.
    torch.testing.assert_close(y, expected, rtol=4 * ROUNDING[dtype], atol=1e-6)


def test_normed_is_rounded_to_x_dtype_before_weight(device):
    """bf16 x, fp32 weight of powers of two: y / weight must be bf16 values, exactly.

    The weight gradient must use the same rounded values: for one row and dy = 1 it is normed.
    """
    x, _, _ = make_inputs((1, 96), torch.bfloat16, torch.float32, device)
    weight = (2.0 ** torch.randint(-3, 4, (96,), device=device).float()).requires_grad_()
    y = rms_norm_triton(x, weight, EPS)
    y.backward(torch.ones_like(y))
    assert y.dtype == torch.float32
    normed = y.detach() / weight.detach()  # exact: dividing by a power of two
    assert torch.equal(normed.to(torch.bfloat16).float(), normed)
    assert torch.equal(weight.grad, normed[0])


def test_strided_rows_are_read_in_place(device):
    x, weight, dy = make_inputs((6, 4, 96), torch.float32, torch.float32, device)
    wide = torch.randn(6, 4, 160, device=device)
    wide[..., :96] = x
    strided = wide[..., :96]  # row stride 160: read without a copy
    assert fused_rms_norm._as_rows(strided, 96).data_ptr() == wide.data_ptr()

    y_ref, dx_ref, dw_ref = run_triton(x, weight, dy)
    base = wide.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    y = rms_norm_triton(base[..., :96], w, EPS)
    y.backward(dy)
    assert torch.equal(y, y_ref) and torch.equal(w.grad, dw_ref)
    assert torch.equal(base.grad[..., :96], dx_ref)
    assert torch.equal(base.grad[..., 96:], torch.zeros_like(base.grad[..., 96:]))


def test_transposed_input_is_copied(device):
    x, weight, dy = make_inputs((5, 96), torch.bfloat16, torch.bfloat16, device)
    y_ref, dx_ref, dw_ref = run_triton(x, weight, dy)
    x_t = x.t().contiguous().requires_grad_()  # (96, 5); its transpose has column stride 5
    w = weight.clone().requires_grad_()
    y = rms_norm_triton(x_t.t(), w, EPS)
    y.backward(dy)
    assert torch.equal(y, y_ref) and torch.equal(w.grad, dw_ref)
    assert torch.equal(x_t.grad.t(), dx_ref)


def test_expanded_output_gradient(device):
    """``y.sum()`` hands the backward a stride-0 gradient."""
    x, weight, _ = make_inputs((7, 64), torch.float32, torch.float32, device)
    y, dx, dw = run_triton(x, weight, torch.ones(1, device=device).expand(7, 64))
    _, dx_ref, dw_ref = run_triton(x, weight, torch.ones(7, 64, device=device))
    assert torch.equal(dx, dx_ref) and torch.equal(dw, dw_ref)


def test_weight_grad_is_bitwise_deterministic(device):
    x, weight, dy = make_inputs((1000, 96), torch.bfloat16, torch.float32, device)
    _, dx_a, dw_a = run_triton(x, weight, dy)
    _, dx_b, dw_b = run_triton(x, weight, dy)
    assert torch.equal(dw_a, dw_b) and torch.equal(dx_a, dx_b)


def test_empty_input(device):
    x = torch.randn(0, 64, device=device, requires_grad=True)
    weight = torch.ones(64, device=device, requires_grad=True)
    y = rms_norm_triton(x, weight, EPS)
    y.sum().backward()
    assert y.shape == (0, 64) and x.grad.shape == (0, 64)
    assert torch.equal(weight.grad, torch.zeros(64, device=device))


def test_hidden_size_limit_is_explicit(device):
    x = torch.randn(1, MAX_FUSED_HIDDEN + 1, device=device)
    with pytest.raises(ValueError, match="hidden sizes up to"):
        rms_norm_triton(x, torch.ones(MAX_FUSED_HIDDEN + 1, device=device), EPS)
    with pytest.raises(ValueError, match="weight must have shape"):
        rms_norm_triton(torch.randn(2, 8, device=device), torch.ones(7, device=device), EPS)


def test_launchers_without_autograd(device):
    x, weight, dy = make_inputs((3, 7), torch.float32, torch.float32, device)
    _, h, rstd = rms_norm_forward(x, weight, EPS)
    assert h is x  # without a residual the forward normalizes x itself
    dx, dw = rms_norm_backward(dy, h, weight, rstd)
    expected_rstd = torch.rsqrt(x.double().pow(2).mean(-1) + EPS)
    torch.testing.assert_close(rstd.double(), expected_rstd, rtol=1e-6, atol=0)
    _, dx_ref, dw_ref = run_triton(x, weight, dy)
    assert torch.equal(dx, dx_ref) and torch.equal(dw, dw_ref)


@pytest.mark.parametrize(
    "x_dtype, residual_dtype, hidden",
    [
        (torch.float32, torch.float32, 7),
        (torch.bfloat16, torch.bfloat16, 96),
        (torch.float16, torch.float16, 511),
        (torch.bfloat16, torch.float32, 64),  # the sum is fp32
    ],
    ids=str,
)
def test_residual_variant_matches_float64(x_dtype, residual_dtype, hidden, device):
    """``(rms_norm(x + residual), x + residual)``, differentiable in x, residual and weight."""
    x, weight, dy = make_inputs((3, 11, hidden), x_dtype, x_dtype, device)
    gen = torch.Generator().manual_seed(7)
    residual = torch.randn(x.shape, generator=gen).to(device=device, dtype=residual_dtype)
    sum_dtype = torch.promote_types(x_dtype, residual_dtype)
    dy = dy.to(torch.promote_types(x_dtype, sum_dtype))
    dsum = torch.randn(x.shape, generator=gen).to(device=device, dtype=sum_dtype)

    leaves = [t.detach().clone().requires_grad_() for t in (x, residual, weight)]
    y, h = rms_norm_residual_triton(*leaves, EPS)
    torch.autograd.backward((y, h), (dy, dsum))
    for name, t in [("y", y), ("h", h)] + [(f"grad{i}", leaf.grad) for i, leaf in enumerate(leaves)]:
        assert torch.isfinite(t).all(), f"{name} has non-finite elements"
    assert h.dtype == sum_dtype and y.dtype == torch.promote_types(x_dtype, sum_dtype)
    assert [leaf.grad.dtype for leaf in leaves] == [x_dtype, residual_dtype, x_dtype]

    ref = [t.detach().double().requires_grad_() for t in (x, residual, weight)]
    h_ref = ref[0] + ref[1]
    y_ref = rms_norm_ref64(h_ref, ref[2], EPS)
    torch.autograd.backward((y_ref, h_ref), (dy.double(), dsum.double()))
    s_round = ROUNDING[sum_dtype]
    torch.testing.assert_close(h.double(), h_ref.detach(), rtol=s_round, atol=1e-6)
    # The norm reads the rounded sum: one more rounding than the plain kernel on y and dx.
    y_rtol = 2 * s_round + ROUNDING[y.dtype] + FP32_SLACK
    torch.testing.assert_close(y.double(), y_ref.detach(), rtol=y_rtol, atol=1e-6)
    for leaf, expected in zip(leaves, ref, strict=True):
        # Gradients are taken at the rounded sum, a point moved by s_round relative to the exact
        # one: an absolute error of that order times the gradient's scale, plus the final cast.
        atol = (2 * s_round + FP32_SLACK) * expected.grad.abs().max().item()
        torch.testing.assert_close(leaf.grad.double(), expected.grad, rtol=ROUNDING[leaf.dtype], atol=atol)


def test_residual_variant_without_sum_gradient(device):
    """When only the normalized output is used, gradients match the unfused ops."""
    x, weight, dy = make_inputs((5, 64), torch.float32, torch.float32, device)
    residual = torch.randn_like(x)
    fused = [t.clone().requires_grad_() for t in (x, residual, weight)]
    y, _ = rms_norm_residual_triton(*fused, EPS)
    y.backward(dy)
    plain = [t.clone().requires_grad_() for t in (x, residual, weight)]
    rms_norm_triton(plain[0] + plain[1], plain[2], EPS).backward(dy)
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-6)
    # The public function and its PyTorch fallback.
    y_api, h_api = kernel_ops.rms_norm_residual(x, residual, weight, EPS, impl="triton")
    y_torch, h_torch = rms_norm_residual_torch(x, residual, weight, EPS)
    assert torch.equal(h_api, h_torch)
    torch.testing.assert_close(y_api, y_torch, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hidden", [512, 768, 4096, 8192])
def test_llm_sizes_on_gpu(hidden, cuda_device):
    if triton_interpreted():
        pytest.skip("kernels are interpreted (TRITON_INTERPRET=1); rerun with TRITON_INTERPRET=0")
    check_against_reference(*make_inputs((16384, hidden), torch.bfloat16, torch.bfloat16, cuda_device))
    x, weight, dy = make_inputs((16384, hidden), torch.bfloat16, torch.float32, cuda_device)
    _, _, dw_a = run_triton(x, weight, dy)
    _, _, dw_b = run_triton(x, weight, dy)
    assert torch.equal(dw_a, dw_b)
