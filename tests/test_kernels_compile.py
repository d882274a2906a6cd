"""The kernels as custom operators: ``opcheck`` of each one, and ``torch.compile`` without graph breaks.

Runs interpreted on CPU (``TRITON_INTERPRET=1``, set by conftest.py), where the operators are
opaque ``custom_op``s that compiled graphs call, or compiled on CUDA, where they are
``triton_op``s that inductor traces into. ``opcheck`` checks each schema, the fake
implementation against the real outputs (shapes, dtypes, strides) and tracing by AOTAutograd
with dynamic shapes. The operators carry no backward (the autograd Functions do), so they are
checked on inputs that do not require grad; the compiled Functions' gradients are checked
against eager mode, where the Functions call the launchers directly.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from minimind_kernels import dispatch, fused_rms_norm, rope  # noqa: E402
from minimind_kernels import functional as kernel_ops  # noqa: E402
from minimind_kernels.dispatch import triton_interpreted  # noqa: E402
from tests.conftest import nan_filled_empty  # noqa: E402

EPS = 1e-5
REPO_ROOT = Path(__file__).resolve().parents[1]
# (shape of x, x dtype, residual dtype, weight dtype): hidden 1, 7 and 4097, several leading
# dims, mixed dtypes (an fp32 sum of bf16 x and fp32 residual; fp32 weight on fp16 rows).
RMS_NORM_CASES = [
    ((3, 7), torch.float32, torch.float32, torch.float32),
    ((2, 3, 4097), torch.bfloat16, torch.bfloat16, torch.bfloat16),
    ((5, 1), torch.float16, torch.float16, torch.float32),
    ((2, 4, 96), torch.bfloat16, torch.float32, torch.bfloat16),
]
# (batch, seq, q_heads, kv_heads, head_dim, dtype)
ROPE_CASES = [
    (1, 7, 3, 1, 6, torch.float32),  # MQA, odd head count, half of head_dim 3
    (2, 5, 8, 2, 64, torch.bfloat16),  # GQA 8:2
    (3, 3, 2, 1, 2, torch.float16),  # head_dim 2
]


@pytest.fixture(autouse=True)
def nan_buffers(monkeypatch):
    """Fill every buffer the launchers allocate with NaN, so unwritten elements show up."""
    monkeypatch.setattr(fused_rms_norm, "_empty", nan_filled_empty)
    monkeypatch.setattr(rope, "_empty", nan_filled_empty)


def randn(*shape, device, dtype=torch.float32, seed=0, requires_grad=False) -> torch.Tensor:
    """Seeded standard normal values, made on CPU and moved, so every device sees the same numbers."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype).requires_grad_(requires_grad)


@pytest.mark.parametrize("shape, x_dtype, residual_dtype, w_dtype", RMS_NORM_CASES, ids=str)
def test_opcheck_rms_norm(shape, x_dtype, residual_dtype, w_dtype, device):
    hidden = shape[-1]
    x = randn(*shape, device=device, dtype=x_dtype)
    residual = randn(*shape, device=device, dtype=residual_dtype, seed=1)
    weight = randn(hidden, device=device, dtype=w_dtype, seed=2)
    torch.library.opcheck(torch.ops.minimind.rms_norm.default, (x, weight, EPS))
    torch.library.opcheck(torch.ops.minimind.rms_norm_residual.default, (x, residual, weight, EPS))

    _, h, rstd = torch.ops.minimind.rms_norm_residual(x, residual, weight, EPS)
    dy = randn(*shape, device=device, dtype=torch.promote_types(w_dtype, h.dtype), seed=3)
    for dsum in (None, randn(*shape, device=device, dtype=h.dtype, seed=4)):
        torch.library.opcheck(torch.ops.minimind.rms_norm_backward.default, (dy, h, weight, rstd, dsum))


def test_opcheck_rms_norm_strided_rows(device):
    """A view with strided rows (read in place) and one whose hidden dimension is strided (copied)."""
    wide = randn(4, 5, 160, device=device)
    weight = randn(96, device=device, seed=1)
    torch.library.opcheck(torch.ops.minimind.rms_norm.default, (wide[..., :96], weight, EPS))
    transposed = randn(96, 6, device=device, seed=2).t()
    torch.library.opcheck(torch.ops.minimind.rms_norm.default, (transposed, weight, EPS))


@pytest.mark.parametrize("batch, seq, q_heads, kv_heads, head_dim, dtype", ROPE_CASES, ids=str)
def test_opcheck_rotary(batch, seq, q_heads, kv_heads, head_dim, dtype, device):
    q = randn(batch, seq, q_heads, head_dim, device=device, dtype=dtype)
    k = randn(batch, seq, kv_heads, head_dim, device=device, dtype=dtype, seed=1)
    cos, sin = randn(seq + 4, head_dim, device=device, seed=2), randn(seq + 4, head_dim, device=device, seed=3)
    for op in (torch.ops.minimind.rotary.default, torch.ops.minimind.rotary_backward.default):
        torch.library.opcheck(op, (q, k, cos, sin, 3))


def every_kernel(x, residual, weight, q, k, cos, sin, position_offset: int, impl: str):
    """A scalar from the three public functions on one ``impl``, every output used."""
    normed = kernel_ops.rms_norm(x, weight, EPS, impl=impl)
    normed_sum, summed = kernel_ops.rms_norm_residual(x, residual, weight, EPS, impl=impl)
    q_rot, k_rot = kernel_ops.apply_rotary(q, k, cos, sin, position_offset=position_offset, impl=impl)
    return (normed * normed_sum).sum() + summed.pow(2).sum() + q_rot.pow(2).sum() + k_rot.sum()


def every_kernel_inputs(device: torch.device, seed: int) -> list[torch.Tensor]:
    """x, residual (2, 5, 96), weight (96,), q (2, 5, 4, 16), k (2, 5, 2, 16): leaves; cos, sin (8, 16)."""
    shapes = [(2, 5, 96), (2, 5, 96), (96,), (2, 5, 4, 16), (2, 5, 2, 16)]
    leaves = [randn(*shape, device=device, seed=seed + i, requires_grad=True) for i, shape in enumerate(shapes)]
    return [*leaves, randn(8, 16, device=device, seed=seed + 5), randn(8, 16, device=device, seed=seed + 6)]


def value_and_grads(fn, inputs: list, *args) -> list[torch.Tensor]:
    """``fn(*inputs, *args)`` on fresh copies of ``inputs``, then the gradients of those that require grad."""
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    value = fn(*leaves, *args)
    value.backward()
    return [value.detach()] + [leaf.grad for leaf in leaves if leaf.requires_grad]


def compile_backend(device: torch.device) -> str:
    """Inductor where the operators are triton_ops; on CPU, AOTAutograd with eager kernels
    checks the same tracing (fake implementations, the Functions' backwards) without a C++ build."""
    return "inductor" if device.type == "cuda" else "aot_eager"


@pytest.mark.parametrize("impl", ["auto", "torch", "triton"])
def test_compiled_without_graph_breaks_equals_eager(impl, device):
    torch._dynamo.reset()
    compiled = torch.compile(every_kernel, backend=compile_backend(device), fullgraph=True)
    inputs = every_kernel_inputs(device, seed=0)
    for got, expected in zip(
        value_and_grads(compiled, inputs, 2, impl), value_and_grads(every_kernel, inputs, 2, impl), strict=True
    ):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    # New values of the same shapes: no recompile, and the dispatch is not consulted again.
    lookups = dispatch.resolved_impl.cache_info()
    with torch._dynamo.config.patch(error_on_recompile=True):
        value_and_grads(compiled, every_kernel_inputs(device, seed=10), 2, impl)
    assert dispatch.resolved_impl.cache_info() == lookups


def test_triton_kernels_enter_the_graph_as_operators(device):
    """What dynamo records for ``impl="triton"``: one graph holding the operators, forward and backward."""
    explained = torch._dynamo.explain(every_kernel)(*every_kernel_inputs(device, seed=0), 2, "triton")
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    recorded = "\n".join(graph.print_readable(print_output=False) for graph in explained.graphs)
    assert set(re.findall(r"torch\.ops\.minimind\.(\w+)", recorded)) == {
        "rms_norm",
        "rms_norm_residual",
        "rms_norm_backward",
        "rotary",
        "rotary_backward",
    }


@pytest.mark.parametrize("used", ["normed", "sum"])
def test_compiled_residual_with_one_output_unused(used, device):
    """The residual backward runs without a gradient for one output (None in eager mode)."""

    def one_output(x, residual, weight):
        normed, summed = kernel_ops.rms_norm_residual(x, residual, weight, EPS, impl="triton")
        return (normed if used == "normed" else summed).pow(2).sum()

    torch._dynamo.reset()
    compiled = torch.compile(one_output, backend=compile_backend(device), fullgraph=True)
    inputs = every_kernel_inputs(device, seed=0)[:3]
    for got, expected in zip(value_and_grads(compiled, inputs), value_and_grads(one_output, inputs), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_triton_ops_expose_their_kernels_when_compiled():
    """Where Triton compiles, the operators are triton_ops that name the kernels they launch:
    torch keys its compiled-graph cache on those kernels' source. Checked on CPU: registering
    needs no GPU."""
    if not hasattr(torch.library, "triton_op"):
        pytest.skip("torch.library.triton_op needs torch >= 2.6; the operators are custom_ops here")
    code = (
        "from torch._library.triton import get_triton_kernels_for_op\n"
        "from minimind_kernels import custom_ops, fused_rms_norm, rope\n"
        "assert custom_ops.TRACEABLE\n"
        "for op in ('rms_norm', 'rms_norm_residual', 'rms_norm_backward', 'rotary', 'rotary_backward'):\n"
        "    print(op, *sorted(k.fn.__name__ for k in get_triton_kernels_for_op('minimind::' + op)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env={**os.environ, "TRITON_INTERPRET": "0"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "rms_norm _rms_norm_fwd_kernel",
        "rms_norm_residual _rms_norm_fwd_kernel",
        "rms_norm_backward _rms_norm_bwd_kernel",
        "rotary _rope_kernel",
        "rotary_backward _rope_kernel",
    ]


def test_inductor_calls_the_kernels_itself(cuda_device):
    """On CUDA inductor traces into the triton_ops: its generated code launches the kernels."""
    if triton_interpreted():
        pytest.skip("kernels are interpreted (TRITON_INTERPRET=1); rerun with TRITON_INTERPRET=0")
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    compiled = torch.compile(every_kernel, fullgraph=True)
    inputs = every_kernel_inputs(cuda_device, seed=0)
    _, codes = run_and_get_code(lambda: value_and_grads(compiled, inputs, 2, "triton"))
    generated = "\n".join(codes)
    for kernel in ("_rms_norm_fwd_kernel", "_rms_norm_bwd_kernel", "_rope_kernel"):
        assert kernel in generated
