"""Starting a job's process group: ``deepspeed.init_distributed`` on the accelerator's backend,
without leaking DeepSpeed's CPU all-reduce buffers in ``/dev/shm``.

On CPU ranks DeepSpeed's ``shm_comm`` op gives every rank a ~69 MB shared-memory buffer
named ``deepspeed_allreduce_buffer_{uid}_{MASTER_ADDR}_{MASTER_PORT}_{rank}``, maps every
local peer's buffer during ``init_distributed``, and never unlinks any of them: each run
would leave its buffers behind until ``/dev/shm`` fills. Once every rank has mapped them
the names are no longer needed (a mapping outlives its name), so each rank unlinks its own
right after start-up, and nothing is left even if the job is later killed.
"""

import os
from datetime import timedelta
from pathlib import Path

import deepspeed
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

SHARED_MEMORY = Path("/dev/shm")


def init_process_group(timeout_s: float | None = None) -> None:
    """Join the job's process group (collectives give up after ``timeout_s``, default torch's);
    on CPU ranks, then unlink this rank's all-reduce buffer name. Collective."""
    accelerator = get_accelerator()
    timeout = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
    deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name(), **timeout)
    if accelerator.device_name() == "cpu":
        unlink_allreduce_buffer()


def allreduce_buffer_path(rank: int) -> Path:
    """Where DeepSpeed's CPU all-reduce buffer of ``rank`` lives for this job."""
    address, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return SHARED_MEMORY / f"deepspeed_allreduce_buffer_{os.getuid()}_{address}_{port}_{rank}"


def unlink_allreduce_buffer() -> None:
    """After every rank has started (a barrier), remove this rank's buffer name. Collective."""
    dist.barrier()
    allreduce_buffer_path(dist.get_rank()).unlink(missing_ok=True)


# What gloo says on a surviving rank when a peer's connection drops (it raises a plain RuntimeError).
GLOO_PEER_LOST = ("Connection closed by peer", "Connection reset by peer")


def lost_a_peer(error: BaseException) -> bool:
    """Whether ``error`` is a collective failing because another rank went away (or timed out)."""
    if isinstance(error, dist.DistError):
        return True
    return isinstance(error, RuntimeError) and "gloo" in str(error) and any(m in str(error) for m in GLOO_PEER_LOST)
