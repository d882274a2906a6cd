"""Registering the Triton host launchers as PyTorch custom operators (namespace ``minimind``).

The kernels' autograd Functions call these operators while ``torch.compile`` traces them:
each launch is then one graph node with a fake implementation (shapes without running it),
so a compiled model has no graph break at a kernel. In eager mode they call the launchers
directly, without the dispatcher's host overhead.

- Compiled Triton on torch >= 2.6: ``torch.library.triton_op``. Inductor traces the operator's
  body and sees its kernel launches (each wrapped in ``wrap_triton``), which it calls from its
  generated code instead of through the dispatcher.
- The Triton interpreter (``TRITON_INTERPRET=1``), or an older torch: ``torch.library.custom_op``,
  opaque to the compiler. The interpreter reads tensor data on the host, which the fake tensors
  ``triton_op`` traces its body with do not have.

Which one is decided at import, as Triton decides at decoration whether a kernel is interpreted.
"""

from collections.abc import Callable

import torch

from minimind_kernels.dispatch import triton_interpreted

NAMESPACE = "minimind"
TRACEABLE = hasattr(torch.library, "triton_op") and not triton_interpreted()


def kernel_op(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register a functional host launcher, its schema taken from its annotations, as
    ``minimind::name``. Register its fake implementation on the returned operator."""
    register = torch.library.triton_op if TRACEABLE else torch.library.custom_op

    def decorate(launcher: Callable) -> Callable:
        return register(f"{NAMESPACE}::{name}", launcher, mutates_args=())

    return decorate


def wrap_triton(kernel):
    """``kernel`` as a ``kernel_op`` body launches it: ``torch.library.wrap_triton`` under ``triton_op``
    (called by this name, so torch finds the kernels an operator launches), else the kernel itself."""
    return torch.library.wrap_triton(kernel) if TRACEABLE else kernel
