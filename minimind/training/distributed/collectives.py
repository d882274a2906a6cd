"""Every collective of this project, on the accelerator's current device.

NCCL has no CPU path: a collective on a host tensor crashes there while gloo accepts it, so
CPU-rank tests never see the mistake. Each function here first places its tensors on the
accelerator's current device (the CPU on CPU ranks) and returns results there; callers
move them to the host afterwards if they need to. ``tests/test_collectives.py`` fails when
any other module calls a ``torch.distributed`` collective directly.

Without a process group (one process, no launcher) every function acts as the collective
of a world of one.
"""

import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator


def accelerator_device() -> torch.device:
    """The accelerator's current device (``cuda:N`` after ``set_device``; ``cpu`` on CPU ranks)."""
    return torch.device(get_accelerator().current_device_name())


def participants() -> tuple[int, int]:
    """``(rank, world size)`` in the collectives: ``(0, 1)`` before the process group exists."""
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def all_reduce(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM, group=None) -> torch.Tensor:
    """``tensor`` reduced over ``group`` (default: every rank), on the accelerator device.

    ``tensor`` itself is reduced in place when it already lives there; the result is returned either way.
    """
    on_device = tensor.to(accelerator_device())
    if dist.is_initialized():
        dist.all_reduce(on_device, op=op, group=group)
    return on_device


def all_gather(tensor: torch.Tensor, group=None) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (same shape on each) in group-rank order, on the accelerator device."""
    on_device = tensor.to(accelerator_device()).contiguous()
    if not dist.is_initialized():
        return [on_device]
    parts = [torch.empty_like(on_device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, on_device, group=group)
    return parts


def all_gather_object(obj) -> list:
    """Every rank's picklable ``obj``, in rank order (torch sends the pickles on the current device)."""
    if not dist.is_initialized():
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s picklable ``obj``, on every rank."""
    if not dist.is_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def barrier() -> None:
    """Wait for every rank. Under NCCL the barrier runs on this rank's own GPU (named, not guessed by torch)."""
    if not dist.is_initialized():
        return
    device = accelerator_device()
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()
