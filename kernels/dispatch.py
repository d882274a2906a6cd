"""Choosing between the Triton kernels and the PyTorch reference.

``auto`` picks Triton on CUDA tensors (when Triton imports) and PyTorch elsewhere;
``triton`` insists on the kernels and says in one line why they cannot run;
``torch`` always takes the reference.
"""

import importlib.util
import os

import torch

IMPLEMENTATIONS = ("auto", "triton", "torch")


class KernelUnavailableError(RuntimeError):
    """Raised when ``impl="triton"`` is asked for where the kernels cannot run."""


def triton_importable() -> bool:
    """True when the ``triton`` package is installed."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    """True when ``TRITON_INTERPRET=1`` runs Triton kernels on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on ``device``, or None when they can."""
    if not triton_importable():
        return "the triton package is not installed"
    if device.type == "cuda" or triton_interpreted():
        return None
    hint = "set TRITON_INTERPRET=1 to interpret them on CPU"
    return f"Triton kernels need a CUDA device (got {device.type}); {hint}"


def resolve_impl(impl: str, device: torch.device) -> str:
    """Turn ``auto|triton|torch`` into the implementation that runs on ``device``."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"kernel implementation must be one of {', '.join(IMPLEMENTATIONS)}, got {impl!r}")
    if impl == "torch":
        return "torch"
    reason = triton_unavailable_reason(device)
    if impl == "triton":
        if reason is not None:
            raise KernelUnavailableError(f"--kernels triton cannot run: {reason}")
        return "triton"
    return "triton" if reason is None and device.type == "cuda" else "torch"
