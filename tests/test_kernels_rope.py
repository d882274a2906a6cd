"""The Triton rotate-half RoPE against a float64 reference written here, forward and backward.

Runs interpreted on CPU (``TRITON_INTERPRET=1``, set by conftest.py) or compiled on CUDA
(``TRITON_INTERPRET=0``). Every buffer the launchers allocate is filled with NaN first, so
an element a kernel fails to write fails the comparison.
"""

import pytest
import torch

pytest.importorskip("triton")

from minimind_kernels import functional as kernel_ops  # noqa: E402
from minimind_kernels import rope  # noqa: E402
from minimind_kernels.dispatch import triton_interpreted  # noqa: E402
from minimind_kernels.rope import apply_rotary_triton  # noqa: E402
from tests.conftest import nan_filled_empty  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# Arithmetic is fp32 and each output is rounded once to its dtype. fp16 rounds to nearest
# (half an ulp: 2^-11 relative). bf16 gets a whole ulp (2^-7), not half: the Triton
# interpreter truncates fp32 -> bf16 casts (triton/runtime/interpreter.py, cast_impl) where
# GPUs round to nearest. fp32 gets 1e-5. The absolute 1e-5 covers fp32 cancellation in
# x1*c - x2*s for inputs of order 1.
RTOL = {torch.float32: 1e-5, torch.bfloat16: 2.0**-7 + 1e-5, torch.float16: 2.0**-11 + 1e-5}
ATOL = 1e-5

# (batch, seq, q_heads, kv_heads, head_dim)
SHAPES = [
    (2, 16, 8, 2, 64),  # MiniMind 26M: GQA 8:2, head_dim 64
    (1, 7, 3, 1, 6),  # MQA, odd head count, half of head_dim 3
    (2, 5, 4, 4, 96),  # MHA, half of head_dim 48
    (3, 3, 2, 1, 2),  # head_dim 2
    (1, 9, 16, 4, 128),  # 144 positions' worth of heads, head_dim 128
]


@pytest.fixture(autouse=True)
def nan_buffers(monkeypatch):
    """Fill every buffer the launchers allocate with NaN, so unwritten elements show up."""
    monkeypatch.setattr(rope, "_empty", nan_filled_empty)


def rope_tables(positions: int, head_dim: int, device, theta: float = 1e6):
    """MiniMind's fp32 tables: cat(f, f) of the angles, f[j] = pos * theta^(-2j/head_dim)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(positions, dtype=torch.float64), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().float().to(device), angles.sin().float().to(device)


def random_tables(positions: int, head_dim: int, device, seed: int = 1):
    """Arbitrary tables whose halves differ, so a kernel mixing up c1/c2 or s1/s2 is caught."""
    gen = torch.Generator().manual_seed(seed)
    cos = torch.randn(positions, head_dim, generator=gen)
    sin = torch.randn(positions, head_dim, generator=gen)
    return cos.to(device), sin.to(device)


def rotate_ref64(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, offset: int) -> torch.Tensor:
    """x * cos + cat(-x2, x1) * sin in float64; x: (batch, seq, heads, head_dim)."""
    x = x.double()
    seq, half = x.shape[1], x.shape[-1] // 2
    cos = cos[offset : offset + seq, None, :].double()  # (seq, 1, head_dim)
    sin = sin[offset : offset + seq, None, :].double()
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def make_qk(shape, dtype, device, seed=0):
    batch, seq, q_heads, kv_heads, head_dim = shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seq, q_heads, head_dim, generator=gen).to(device=device, dtype=dtype)
    k = torch.randn(batch, seq, kv_heads, head_dim, generator=gen).to(device=device, dtype=dtype)
    dq = torch.randn(q.shape, generator=gen).to(device=device, dtype=dtype)
    dk = torch.randn(k.shape, generator=gen).to(device=device, dtype=dtype)
    return q, k, dq, dk


def run_triton(q, k, dq, dk, cos, sin, offset=0):
    q = q.detach().clone().requires_grad_()
    k = k.detach().clone().requires_grad_()
    q_rot, k_rot = apply_rotary_triton(q, k, cos, sin, offset)
    torch.autograd.backward((q_rot, k_rot), (dq, dk))
    return q_rot.detach(), k_rot.detach(), q.grad, k.grad


def check_against_reference(q, k, dq, dk, cos, sin, offset=0):
    q_rot, k_rot, q_grad, k_grad = run_triton(q, k, dq, dk, cos, sin, offset)
    for name, t in (("q_rot", q_rot), ("k_rot", k_rot), ("q.grad", q_grad), ("k.grad", k_grad)):
        assert torch.isfinite(t).all(), f"{name} has non-finite elements"
    assert q_rot.dtype == q_grad.dtype == q.dtype and k_rot.dtype == k_grad.dtype == k.dtype

    q64 = q.detach().double().requires_grad_()
    k64 = k.detach().double().requires_grad_()
    q_ref, k_ref = rotate_ref64(q64, cos, sin, offset), rotate_ref64(k64, cos, sin, offset)
    torch.autograd.backward((q_ref, k_ref), (dq.double(), dk.double()))
    tol = dict(rtol=RTOL[q.dtype], atol=ATOL)
    torch.testing.assert_close(q_rot.double(), q_ref.detach(), **tol)
    torch.testing.assert_close(k_rot.double(), k_ref.detach(), **tol)
    torch.testing.assert_close(q_grad.double(), q64.grad, **tol)
    torch.testing.assert_close(k_grad.double(), k64.grad, **tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_backward_matches_float64(shape, dtype, device):
    cos, sin = rope_tables(32, shape[-1], device)
    check_against_reference(*make_qk(shape, dtype, device), cos, sin)


@pytest.mark.parametrize("shape", SHAPES[:3], ids=str)
def test_arbitrary_tables(shape, device):
    cos, sin = random_tables(32, shape[-1], device)
    check_against_reference(*make_qk(shape, torch.float32, device), cos, sin, offset=3)


@pytest.mark.parametrize("seq, offset", [(1, 0), (1, 37), (4, 60)])
def test_decode_offset(seq, offset, device):
    """KV-cache decoding: rows offset..offset+seq-1 of a 64-row table (the last rows for (4, 60))."""
    shape = (2, seq, 8, 2, 64)
    cos, sin = rope_tables(64, 64, device)
    check_against_reference(*make_qk(shape, torch.bfloat16, device), cos, sin, offset=offset)

    # Same values as rotating the whole sequence and keeping its last positions.
    q, k, _, _ = make_qk(shape, torch.float32, device)
    prefix = torch.randn(2, offset, 8, 64, device=device)
    q_full, _ = apply_rotary_triton(torch.cat((prefix, q), 1), torch.cat((prefix[:, :, :2], k), 1), cos, sin)
    q_step, _ = apply_rotary_triton(q, k, cos, sin, position_offset=offset)
    assert torch.equal(q_step, q_full[:, offset:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_joint_launch_equals_separate_rotations(dtype, device):
    q, k, _, _ = make_qk((2, 6, 8, 2, 64), dtype, device)
    cos, sin = rope_tables(16, 64, device)
    q_rot, k_rot = apply_rotary_triton(q, k, cos, sin, 2)
    q_alone, _ = apply_rotary_triton(q, q, cos, sin, 2)
    k_alone, _ = apply_rotary_triton(k, k, cos, sin, 2)
    assert torch.equal(q_rot, q_alone) and torch.equal(k_rot, k_alone)


def test_strided_views_of_a_fused_projection(device):
    """q, k as the model makes them: views of one projection output, and a transposed layout."""
    batch, seq, q_heads, kv_heads, head_dim = 2, 5, 8, 2, 64
    q, k, dq, dk = make_qk((batch, seq, q_heads, kv_heads, head_dim), torch.bfloat16, device)
    cos, sin = rope_tables(8, head_dim, device)
    expected = run_triton(q, k, dq, dk, cos, sin, 1)

    qkv = torch.cat((q.flatten(2), k.flatten(2), torch.randn_like(k.flatten(2))), dim=-1).requires_grad_()
    q_width, kv_width = q_heads * head_dim, kv_heads * head_dim
    q_view = qkv[..., :q_width].view(batch, seq, q_heads, head_dim)
    k_view = qkv[..., q_width : q_width + kv_width].view(batch, seq, kv_heads, head_dim)
    assert not q_view.is_contiguous() and not k_view.is_contiguous()
    q_rot, k_rot = apply_rotary_triton(q_view, k_view, cos, sin, 1)
    torch.autograd.backward((q_rot, k_rot), (dq, dk))
    assert torch.equal(q_rot, expected[0]) and torch.equal(k_rot, expected[1])
    grads = qkv.grad.split([q_width, kv_width, kv_width], dim=-1)
    assert torch.equal(grads[0].view_as(q), expected[2]) and torch.equal(grads[1].view_as(k), expected[3])
    assert torch.equal(grads[2], torch.zeros_like(grads[2]))

    # (batch, heads, seq, head_dim) transposed to (batch, seq, heads, head_dim), and a
    # head_dim with stride 2 (copied), with transposed incoming gradients.
    q_t = q.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    k_wide = torch.stack((k, torch.zeros_like(k)), dim=-1).flatten(-2)
    k_strided = k_wide[..., ::2].requires_grad_()
    assert k_strided.stride(-1) == 2
    q_rot, k_rot = apply_rotary_triton(q_t, k_strided, cos, sin, 1)
    torch.autograd.backward((q_rot, k_rot), (dq.transpose(1, 2).contiguous().transpose(1, 2), dk))
    assert torch.equal(q_rot, expected[0]) and torch.equal(k_rot, expected[1])
    assert torch.equal(q_t.grad, expected[2]) and torch.equal(k_strided.grad, expected[3])


def test_incoming_gradient_is_not_overwritten(device):
    """``q_rot + bias`` hands the same gradient tensor to both inputs: it must survive."""
    q, k, dq, dk = make_qk((1, 4, 2, 1, 8), torch.float32, device)
    cos, sin = rope_tables(8, 8, device)
    q = q.requires_grad_()
    bias = torch.zeros_like(q, requires_grad=True)
    q_rot, k_rot = apply_rotary_triton(q, k, cos, sin)
    ((q_rot + bias) * dq).sum().backward()
    assert torch.equal(bias.grad, dq)

    # A stride-0 gradient, as ``sum()`` produces.
    q_rot, k_rot = apply_rotary_triton(q.detach(), k.requires_grad_(), cos, sin)
    k_rot.sum().backward()
    ones = torch.ones_like(k)
    torch.testing.assert_close(k.grad.double(), rotate_ref64(ones, cos, -sin, 0), rtol=1e-5, atol=1e-6)


def test_public_api_differentiates_both_inputs(device):
    q, k, dq, dk = make_qk((2, 3, 4, 2, 16), torch.bfloat16, device)
    cos, sin = rope_tables(8, 16, device)
    q = q.requires_grad_()
    k = k.requires_grad_()
    q_rot, k_rot = kernel_ops.apply_rotary(q, k, cos, sin, position_offset=2, impl="triton")
    torch.autograd.backward((q_rot, k_rot), (dq, dk))
    assert q.grad is not None and k.grad is not None
    # The model's default table dtype may be bf16 too: then the tables are read as they are.
    q_rot_bf16, _ = kernel_ops.apply_rotary(q, k, cos.bfloat16(), sin.bfloat16(), 2, impl="triton")
    q_ref = rotate_ref64(q, cos.bfloat16().float(), sin.bfloat16().float(), 2)
    torch.testing.assert_close(q_rot_bf16.double(), q_ref.detach(), rtol=RTOL[torch.bfloat16], atol=ATOL)


def test_bad_arguments_raise(device):
    q, k, _, _ = make_qk((1, 4, 2, 1, 8), torch.float32, device)
    cos, sin = rope_tables(8, 8, device)
    with pytest.raises(ValueError, match="fall outside"):
        apply_rotary_triton(q, k, cos, sin, position_offset=5)
    with pytest.raises(ValueError, match="even head_dim"):
        apply_rotary_triton(q[..., :7], k[..., :7], cos[:, :7], sin[:, :7])
    with pytest.raises(ValueError, match="differ outside the head count"):
        apply_rotary_triton(q, k[:, :3], cos, sin)
    with pytest.raises(ValueError, match="does not differentiate through cos/sin"):
        apply_rotary_triton(q, k, cos.requires_grad_(), sin)


@pytest.mark.parametrize("shape", [(32, 340, 8, 2, 64), (4, 2048, 32, 8, 128)], ids=str)
def test_llm_sizes_on_gpu(shape, cuda_device):
    if triton_interpreted():
        pytest.skip("kernels are interpreted (TRITON_INTERPRET=1); rerun with TRITON_INTERPRET=0")
    cos, sin = rope_tables(4096, shape[-1], cuda_device)
    check_against_reference(*make_qk(shape, torch.bfloat16, cuda_device), cos, sin, offset=7)
