"""Choosing between the Triton kernels and the PyTorch reference.

``auto`` picks Triton on CUDA tensors (when Triton imports and can compile there) and
PyTorch elsewhere; ``triton`` insists on the kernels and says in one line why they cannot
run; ``torch`` always takes the reference.

Whether Triton can compile is checked once per CUDA device and process, by compiling and
launching a tiny kernel (``minimind_kernels.compile_probe``). Where that fails, ``auto`` falls back
to PyTorch and logs the reason in one line, once.

The choice itself is made once per implementation and device and then looked up, and
``torch.compile`` folds it into the graph as a constant, so it costs a compiled model nothing.
"""

import functools
import importlib.util
import logging
import os

import torch

IMPLEMENTATIONS = ("auto", "triton", "torch")

logger = logging.getLogger(__name__)


class KernelUnavailableError(RuntimeError):
    """Raised when ``impl="triton"`` is asked for where the kernels cannot run."""


def triton_importable() -> bool:
    """True when the ``triton`` package is installed."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    """True when ``TRITON_INTERPRET=1`` runs Triton kernels on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def cuda_device_index(device: torch.device) -> int:
    """The index of CUDA ``device``; a bare ``cuda`` means the current device."""
    return device.index if device.index is not None else torch.cuda.current_device()


def first_line(error: Exception) -> str:
    """``Type: first line of the message``: tracebacks from compilers and drivers run long."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else 'no message'}"


@functools.cache
def triton_compile_failure(device_index: int) -> str | None:
    """Why Triton cannot compile and run a kernel on ``cuda:device_index`` (one line), or None.

    Runs the probe kernel the first time it is asked about a device; later calls return the
    cached answer, so the forward pass never pays for it.
    """
    try:
        from minimind_kernels.compile_probe import run_compile_probe

        run_compile_probe(torch.device("cuda", device_index))
    except Exception as error:  # whatever breaks the probe (import, compiler, driver) breaks every kernel
        return f"Triton cannot compile and run a kernel on cuda:{device_index} ({first_line(error)})"
    return None


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on ``device``, or None when they can."""
    if not triton_importable():
        return "the triton package is not installed"
    if triton_interpreted():
        return None
    if device.type == "cuda":
        return triton_compile_failure(cuda_device_index(device))
    hint = "set TRITON_INTERPRET=1 to interpret them on CPU"
    return f"Triton kernels need a CUDA device (got {device.type}); {hint}"


@functools.cache
def log_auto_fallback(reason: str) -> None:
    """Log, once per process and reason, that ``auto`` runs the PyTorch reference on a GPU."""
    logger.warning("kernels auto: using the PyTorch reference: %s", reason)


@torch.compiler.assume_constant_result
def resolve_impl(impl: str, device: torch.device) -> str:
    """Turn ``auto|triton|torch`` into the implementation that runs on ``device``.

    Decided once per implementation, device and interpreter setting (``resolved_impl``); later
    calls look it up (``torch`` needs no lookup). ``torch.compile`` calls it once while tracing
    and keeps the answer as a constant: no graph break, no guard on this module's state. (Under
    it, a ``KernelUnavailableError`` reaches the caller as dynamo's ``InternalTorchDynamoError``
    with the same message: check ``--kernels`` before compiling, as the training entry point does.)
    """
    if impl == "torch":
        return "torch"
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"kernel implementation must be one of {', '.join(IMPLEMENTATIONS)}, got {impl!r}")
    index = cuda_device_index(device) if device.type == "cuda" else None
    return resolved_impl(impl, device.type, index, triton_interpreted())


@functools.cache
def resolved_impl(impl: str, device_type: str, device_index: int | None, interpreted: bool) -> str:
    """``resolve_impl`` for ``auto`` or ``triton`` on device ``device_type:device_index``, cached;
    a ``KernelUnavailableError`` is raised again on every call, not cached."""
    device = torch.device(device_type, device_index)
    reason = triton_unavailable_reason(device)
    if impl == "triton":
        if reason is not None:
            raise KernelUnavailableError(f"--kernels triton cannot run: {reason}")
        return "triton"
    if device_type != "cuda":
        return "torch"  # auto never picks the slow interpreter
    if reason is not None:
        log_auto_fallback(reason)
        return "torch"
    return "triton"
