"""Reading a value computed on the accelerator without draining its queue.

``tensor.item()`` on a GPU waits for everything queued before it, so the host stops feeding
work. ``copy_to_host_later`` starts a non-blocking copy into pinned memory and records an
event right after it; the returned function waits for that event only, which by the time it
is called has long passed.
"""

from collections.abc import Callable

import torch
from deepspeed.accelerator import get_accelerator


def copy_to_host_later(tensor: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Start copying ``tensor`` to the host; the returned function waits for the copy and gives the host tensor."""
    if tensor.device.type == "cpu":
        value = tensor.clone()
        return lambda: value
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)  # from torch's pinned-block cache
    host.copy_(tensor, non_blocking=True)
    copied = get_accelerator().Event()
    copied.record()

    def wait() -> torch.Tensor:
        copied.synchronize()
        return host

    return wait
