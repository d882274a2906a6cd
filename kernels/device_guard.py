"""Launching a Triton kernel on its tensors' own GPU.

A Triton launch goes to the *current* CUDA device and its stream, not to the device its
pointer arguments live on. In a model split across GPUs for inference, a layer on cuda:1
called while cuda:0 is current would launch on the wrong GPU (an illegal address, or
"Pointer argument cannot be accessed from Triton"). Every host launcher therefore
launches inside ``on_device_of(tensor)``.
"""

import contextlib

import torch


def on_device_of(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Context that makes ``tensor``'s CUDA device the current one; a no-op for CPU tensors."""
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()
