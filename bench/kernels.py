"""Speed of the Triton RMSNorm and RoPE against PyTorch eager and ``torch.compile``.

    python -m bench.kernels            # one CUDA GPU, bf16, LLM sizes; about 3 minutes
    python -m bench.kernels --smoke    # CPU, tiny sizes, TRITON_INTERPRET=1: checks the harness

Each kernel is timed forward, backward and forward+backward with ``triton.testing.do_bench``
(median), and its bandwidth is compared with this card's device-to-device copy, measured in
the same run (``dst.copy_(src)`` on 1 GiB). Bytes counted are the ideal traffic: every
activation read or written once (tables, weights and per-row statistics left out).
Run it from the repository root: ``bench`` imports the ``kernels`` package.

``--smoke`` runs every case at a tiny size on CPU, checks that the three implementations
agree (outputs and gradients), and prints the table with single-call wall times that say
nothing about speed.
"""

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch._functorch import config as functorch_config

# (rows, hidden): MiniMind 26M/104M widths at 4k..64k tokens, and Llama-sized widths.
RMS_NORM_SHAPES = [(4096, 512), (16384, 512), (65536, 512), (16384, 2048), (65536, 8192)]
RMS_NORM_RESIDUAL_SHAPES = [(16384, 768), (16384, 4096)]
# (batch, seq, q_heads, kv_heads, head_dim)
ROPE_SHAPES = [
    (8, 512, 8, 2, 64),  # MiniMind 26M, 4k tokens
    (32, 2048, 8, 2, 64),  # 64k tokens
    (16, 1024, 8, 2, 96),  # MiniMind 104M, 16k tokens
    (4, 4096, 32, 8, 128),  # Llama-8B heads, 16k tokens
]
SMOKE_RMS_NORM_SHAPES = [(8, 64), (5, 7)]
SMOKE_RMS_NORM_RESIDUAL_SHAPES = [(6, 32)]
SMOKE_ROPE_SHAPES = [(1, 4, 4, 2, 16)]
IMPLS = ("triton", "eager", "compile")
MODES = ("forward", "backward", "forward+backward")
EPS = 1e-5


@dataclass
class Case:
    """One kernel at one shape: how to run it, and how many bytes each mode must move."""

    kernel: str
    shape: str
    inputs: list[torch.Tensor]  # differentiable inputs
    grads: list[torch.Tensor]  # gradients of the outputs
    run: dict[str, Callable[[], tuple[torch.Tensor, ...]]]  # impl -> forward
    bytes_forward: int
    bytes_backward: int


def rms_norm_case(rows: int, hidden: int, device: torch.device, compile_fn) -> Case:
    from minimind_kernels.fused_rms_norm import rms_norm_triton
    from minimind_kernels.reference import rms_norm_torch

    x = torch.randn(rows, hidden, device=device, dtype=torch.bfloat16, requires_grad=True)
    weight = (1 + 0.1 * torch.randn(hidden, device=device)).to(torch.bfloat16).requires_grad_()
    dy = torch.randn(rows, hidden, device=device, dtype=torch.bfloat16)
    compiled = compile_fn(rms_norm_torch)
    activation = x.numel() * x.element_size()
    return Case(
        kernel="rms_norm",
        shape=f"{rows}x{hidden}",
        inputs=[x, weight],
        grads=[dy],
        run={
            "triton": lambda: (rms_norm_triton(x, weight, EPS),),
            "eager": lambda: (rms_norm_torch(x, weight, EPS),),
            "compile": lambda: (compiled(x, weight, EPS),),
        },
        bytes_forward=2 * activation,  # read x, write y
        bytes_backward=3 * activation,  # read dy and x, write dx
    )


def rms_norm_residual_case(rows: int, hidden: int, device: torch.device, compile_fn) -> Case:
    from minimind_kernels.fused_rms_norm import rms_norm_residual_triton
    from minimind_kernels.reference import rms_norm_residual_torch

    x = torch.randn(rows, hidden, device=device, dtype=torch.bfloat16, requires_grad=True)
    residual = torch.randn_like(x, requires_grad=True)
    weight = (1 + 0.1 * torch.randn(hidden, device=device)).to(torch.bfloat16).requires_grad_()
    compiled = compile_fn(rms_norm_residual_torch)
    activation = x.numel() * x.element_size()
    return Case(
        kernel="rms_norm_residual",
        shape=f"{rows}x{hidden}",
        inputs=[x, residual, weight],
        grads=[torch.randn_like(x), torch.randn_like(x)],
        run={
            "triton": lambda: rms_norm_residual_triton(x, residual, weight, EPS),
            "eager": lambda: rms_norm_residual_torch(x, residual, weight, EPS),
            "compile": lambda: compiled(x, residual, weight, EPS),
        },
        bytes_forward=4 * activation,  # read x and residual, write the sum and y
        bytes_backward=4 * activation,  # read dy, d(sum) and the sum, write one shared gradient
    )


def rope_case(batch, seq, q_heads, kv_heads, head_dim, device: torch.device, compile_fn) -> Case:
    from minimind_kernels.reference import apply_rotary_torch
    from minimind_kernels.rope import apply_rotary_triton

    dtype = torch.bfloat16
    q = torch.randn(batch, seq, q_heads, head_dim, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(batch, seq, kv_heads, head_dim, device=device, dtype=dtype, requires_grad=True)
    inv_freq = 1e6 ** (-torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    angles = torch.outer(torch.arange(seq, device=device).float(), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos(), angles.sin()  # (seq, head_dim) fp32, as the model keeps them
    compiled = compile_fn(apply_rotary_torch)
    activation = (q.numel() + k.numel()) * q.element_size()
    return Case(
        kernel="rope",
        shape=f"b{batch} s{seq} h{q_heads}/{kv_heads} d{head_dim}",
        inputs=[q, k],
        grads=[torch.randn_like(q), torch.randn_like(k)],
        run={
            "triton": lambda: apply_rotary_triton(q, k, cos, sin),
            "eager": lambda: apply_rotary_torch(q, k, cos, sin),
            "compile": lambda: compiled(q, k, cos, sin),
        },
        bytes_forward=2 * activation,  # read q, k; write their rotations
        bytes_backward=2 * activation,  # read dq_rot, dk_rot; write dq, dk
    )


def mode_fn(case: Case, impl: str, mode: str) -> Callable[[], object]:
    """A no-argument callable that runs ``mode`` of ``impl`` once."""
    run = case.run[impl]
    if mode == "forward":

        def forward():
            with torch.no_grad():
                return run()

        return forward
    if mode == "backward":
        outputs = run()  # graph kept alive, replayed with retain_graph

        def backward():
            torch.autograd.backward(outputs, case.grads, retain_graph=True)

        return backward

    def forward_backward():
        torch.autograd.backward(run(), case.grads)

    return forward_backward


def check_agreement(case: Case) -> None:
    """Triton and compile against eager: outputs and input gradients, bf16 tolerance."""
    results = {}
    for impl in IMPLS:
        for t in case.inputs:
            t.grad = None
        outputs = case.run[impl]()
        torch.autograd.backward(outputs, case.grads)
        results[impl] = [o.detach().float() for o in outputs] + [t.grad.float() for t in case.inputs]
    for impl in ("triton", "compile"):
        for got, expected in zip(results[impl], results["eager"], strict=True):
            # bf16 outputs: a few ulps (2^-7 each) of rounding differences; weight grads sum many rows.
            atol = 0.05 * expected.abs().max().item()
            torch.testing.assert_close(got, expected, rtol=4 * 2.0**-7, atol=atol)
    for t in case.inputs:
        t.grad = None


def timer(smoke: bool) -> Callable[[Callable[[], object], list[torch.Tensor]], float]:
    """Milliseconds per call: do_bench's median on GPU, one wall-clock call in smoke mode."""
    if smoke:

        def wall_ms(fn, grad_to_none):
            fn()
            start = time.perf_counter()
            fn()
            return 1000 * (time.perf_counter() - start)

        return wall_ms
    from triton.testing import do_bench

    return lambda fn, grad_to_none: do_bench(fn, grad_to_none=grad_to_none, return_mode="median")


def copy_bandwidth_gbs(device: torch.device, measure) -> float:
    """Device-to-device copy bandwidth, counting the read and the write."""
    n_bytes = (1 << 30) if device.type == "cuda" else (1 << 20)
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = measure(lambda: dst.copy_(src), [])
    return 2 * n_bytes / ms / 1e6


def format_ms(ms: float | None) -> str:
    return "n/a" if ms is None else f"{ms:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU under TRITON_INTERPRET=1")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    args = parser.parse_args()

    if args.smoke:
        # Triton decides whether to interpret when the kernel modules are imported, below.
        os.environ["TRITON_INTERPRET"] = "1"
        device = torch.device("cpu")
        rms_shapes, residual_shapes, rope_shapes = (
            SMOKE_RMS_NORM_SHAPES,
            SMOKE_RMS_NORM_RESIDUAL_SHAPES,
            SMOKE_ROPE_SHAPES,
        )
    else:
        if not torch.cuda.is_available():
            sys.exit("bench/kernels.py needs a CUDA GPU (use --smoke to check the harness on CPU)")
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            sys.exit("bench/kernels.py times compiled kernels: unset TRITON_INTERPRET")
        device = torch.device("cuda")
        rms_shapes, residual_shapes, rope_shapes = RMS_NORM_SHAPES, RMS_NORM_RESIDUAL_SHAPES, ROPE_SHAPES

    impls = tuple(i for i in IMPLS if not (args.no_compile and i == "compile"))
    # The backward is timed by replaying one graph (retain_graph=True); compiled backwards
    # donate their saved buffers by default (a memory saving), which forbids replays.
    functorch_config.donated_buffer = False
    compile_fn = (lambda fn: fn) if args.no_compile else (lambda fn: torch.compile(fn, dynamic=False))
    measure = timer(args.smoke)
    started = time.perf_counter()
    copy_gbs = copy_bandwidth_gbs(device, measure)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter)"
    print(f"# Triton kernels vs PyTorch, bf16, on {name}")
    print()
    print(f"Device-to-device copy: {copy_gbs:.0f} GB/s (read + write). Times: median ms.")
    if args.smoke:
        print("Smoke run: interpreted kernels at tiny sizes; the times measure nothing.")
    print()
    columns = ["kernel", "shape", "mode", "triton ms", "eager ms", "compile ms"]
    columns += ["triton GB/s", "% of copy", "vs eager", "vs compile"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))

    cases = [lambda s=s: rms_norm_case(*s, device, compile_fn) for s in rms_shapes]
    cases += [lambda s=s: rms_norm_residual_case(*s, device, compile_fn) for s in residual_shapes]
    cases += [lambda s=s: rope_case(*s, device, compile_fn) for s in rope_shapes]
    for make_case in cases:
        # Dynamo keys its cache on the reference's code object and stops compiling (silently
        # running eager) past recompile_limit entries; every case starts from an empty cache.
        torch._dynamo.reset()
        case = make_case()
        if args.smoke:
            check_agreement(case)
        for mode in MODES:
            ms = {impl: None for impl in IMPLS}
            for impl in impls:
                ms[impl] = measure(mode_fn(case, impl, mode), case.inputs)
            n_bytes = {
                "forward": case.bytes_forward,
                "backward": case.bytes_backward,
                "forward+backward": case.bytes_forward + case.bytes_backward,
            }[mode]
            gbs = n_bytes / ms["triton"] / 1e6
            vs_eager = f"{ms['eager'] / ms['triton']:.2f}x"
            vs_compile = "n/a" if ms["compile"] is None else f"{ms['compile'] / ms['triton']:.2f}x"
            row = [case.kernel, case.shape, mode] + [format_ms(ms[impl]) for impl in IMPLS]
            row += [f"{gbs:.0f}", f"{100 * gbs / copy_gbs:.0f}%", vs_eager, vs_compile]
            print("| " + " | ".join(row) + " |")
        del case
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print()
    elapsed = time.perf_counter() - started
    print(f"Ratios are speed-ups of triton (>1x: triton faster). Wall time {elapsed:.0f} s.")
    if args.smoke:
        print(f"Smoke check passed: {', '.join(impls)} agree on every case.")


if __name__ == "__main__":
    if not __package__:
        sys.exit("run it as a module from the repository root: python -m bench.kernels")
    main()
