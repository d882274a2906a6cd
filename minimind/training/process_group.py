"""Starting a job's process group, whichever launcher started the job (or none).

``deepspeed.init_distributed`` needs torch's variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). DeepSpeed's own launcher and ``torchrun``
set them; for the others this module fills them in from the launcher's own variables
(``minimind.training.world``) before the group starts:

- no launcher at all: rank 0 of 1 on a free local port;
- Slurm's ``srun``: the first host of the step (``scontrol show hostnames``) is the master,
  unless ``MASTER_ADDR`` is exported;
- MPI (OpenMPI, MPICH, Intel MPI) with ``MASTER_ADDR`` exported: from the MPI variables;
  without it, DeepSpeed's own MPI discovery (``mpi4py``) finds the master.

On a GPU each rank selects its device before the group starts (so NCCL and every
collective use the rank's own GPU), and NCCL's asynchronous error handling is on, so a dead
or stalled peer ends the job within the collective timeout instead of hanging it.

On CPU ranks DeepSpeed's ``shm_comm`` op gives every rank a ~69 MB shared-memory buffer
named ``deepspeed_allreduce_buffer_{uid}_{MASTER_ADDR}_{MASTER_PORT}_{rank}``, maps every
local peer's buffer during ``init_distributed``, and never unlinks any of them: each run
would leave its buffers behind until ``/dev/shm`` fills. Once every rank has mapped them
the names are no longer needed (a mapping outlives its name), so each rank unlinks its own
right after start-up, and nothing is left even if the job is later killed.
"""

import importlib.util
import os
import socket
import subprocess
from datetime import timedelta
from pathlib import Path

import deepspeed
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from minimind.training.collectives import barrier
from minimind.training.world import NO_LAUNCHER, LaunchedWorld, LauncherError, launched_world, local_rank

SHARED_MEMORY = Path("/dev/shm")
DEFAULT_MASTER_PORT = 29500


def init_process_group(timeout_s: float | None = None) -> LaunchedWorld:
    """Join the job's process group (collectives give up after ``timeout_s``, default torch's) on
    this rank's own device; returns the launcher's world. On CPU ranks, then unlink this rank's
    all-reduce buffer name. Collective."""
    world = launched_world()
    export_torch_variables(world)
    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        accelerator.set_device(local_device_index())
    # Tear the communicator down on a NCCL error or timeout (the job ends) instead of hanging.
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    timeout = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
    port = int(os.environ.get("MASTER_PORT", DEFAULT_MASTER_PORT))
    deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name(), distributed_port=port,
                               **timeout)
    if (dist.get_rank(), dist.get_world_size()) != (world.rank, world.size):
        raise LauncherError(f"the process group made this rank {dist.get_rank()} of {dist.get_world_size()}, "
                            f"but {world.launcher} said {world.rank} of {world.size}")
    if accelerator.device_name() == "cpu":
        unlink_allreduce_buffer()
    return world


def export_torch_variables(world: LaunchedWorld, environ=None) -> None:
    """Set torch's rendezvous variables in ``environ`` (default ``os.environ``) for a launcher that
    sets other names, or for no launcher; a torch-style launcher's are left as they are."""
    environ = os.environ if environ is None else environ
    if world.launcher == "deepspeed/torchrun":
        return
    if world.launcher == NO_LAUNCHER:
        environ.setdefault("MASTER_ADDR", "127.0.0.1")
        environ.setdefault("MASTER_PORT", str(free_local_port()))
    elif "MASTER_ADDR" not in environ:
        if world.launcher == "slurm":
            environ["MASTER_ADDR"] = first_slurm_host(environ)
        elif importlib.util.find_spec("mpi4py") is not None:
            return  # deepspeed.init_distributed's MPI discovery sets everything
        else:
            raise LauncherError(f"started by {world.launcher} without MASTER_ADDR: pip install mpi4py (DeepSpeed then "
                                "finds the master through MPI), or export MASTER_ADDR and MASTER_PORT to all ranks")
    environ.setdefault("MASTER_PORT", str(DEFAULT_MASTER_PORT))
    environ.update(RANK=str(world.rank), WORLD_SIZE=str(world.size), LOCAL_RANK=str(world.local_rank))


def first_slurm_host(environ) -> str:
    """The first host name of the Slurm step (or job), which hosts rank 0."""
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise LauncherError("started by srun but SLURM_STEP_NODELIST is not set; export MASTER_ADDR")
    try:
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError) as error:
        raise LauncherError(f"cannot expand the Slurm node list {nodelist!r} with scontrol ({error}); "
                            "export MASTER_ADDR") from None
    return hosts[0]


def free_local_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_device_index() -> int:
    """This rank's accelerator on its node: its local rank, modulo the devices it can see
    (Slurm's one-GPU-per-task jobs show each task only its own GPU, as device 0)."""
    return local_rank() % max(get_accelerator().device_count(), 1)


def allreduce_buffer_path(rank: int) -> Path:
    """Where DeepSpeed's CPU all-reduce buffer of ``rank`` lives for this job."""
    address, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return SHARED_MEMORY / f"deepspeed_allreduce_buffer_{os.getuid()}_{address}_{port}_{rank}"


def unlink_allreduce_buffer() -> None:
    """After every rank has started (a barrier), remove this rank's buffer name. Collective."""
    barrier()
    allreduce_buffer_path(dist.get_rank()).unlink(missing_ok=True)


# What a surviving rank's collective says when a peer's connection drops or the peer stops
# answering: gloo raises a plain RuntimeError, NCCL's watchdog a DistBackendError (a DistError)
# or, from older torch, a RuntimeError naming NCCL.
GLOO_PEER_LOST = ("Connection closed by peer", "Connection reset by peer")
NCCL_PEER_LOST = ("Watchdog caught collective operation timeout", "communicator was aborted", "ncclRemoteError",
                  "ncclSystemError", "remote process exited")


def lost_a_peer(error: BaseException) -> bool:
    """Whether ``error`` is a collective failing because another rank went away (or timed out)."""
    if isinstance(error, dist.DistError):
        return True
    if not isinstance(error, RuntimeError):
        return False
    message = str(error)
    return (("gloo" in message and any(m in message for m in GLOO_PEER_LOST))
            or ("NCCL" in message and any(m in message for m in NCCL_PEER_LOST)))
