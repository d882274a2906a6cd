"""Starting a job's process group, whichever launcher started the job (or none).

``deepspeed.init_distributed`` needs torch's variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). DeepSpeed's own launcher and ``torchrun``
set them; for the others this module fills them in from the launcher's own variables
(``minimind.training.distributed.world``) before the group starts:

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
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from deepspeed.comm.comm import mpi_discovery
from packaging import version

from minimind.errors import UserInputError
from minimind.training.distributed.collectives import barrier
from minimind.training.distributed.rendezvous import (
    DEFAULT_REPORT_INTERVAL_S,
    PeerStartError,
    connect,
    leave_after_failure,
    record_failure,
    wait_for_every_rank,
)
from minimind.training.distributed.world import (
    NO_LAUNCHER,
    TORCH_LAUNCHER,
    LaunchedWorld,
    LauncherError,
    launched_world,
    local_rank,
    node_ranks,
)

SHARED_MEMORY = Path("/dev/shm")
DEFAULT_MASTER_PORT = 29500
# How long ranks wait for each other at start (a node still tokenizing arrives late).
DEFAULT_RENDEZVOUS_TIMEOUT_S = 2 * 3600


def init_process_group(timeout_s: float | None = None,
                       rendezvous_timeout_s: float = DEFAULT_RENDEZVOUS_TIMEOUT_S,
                       report_interval_s: float = DEFAULT_REPORT_INTERVAL_S) -> LaunchedWorld:
    """Join the job's process group on this rank's own device; returns the launcher's world.

    Collectives give up after ``timeout_s`` (default torch's). Meeting the other ranks may
    take up to ``rendezvous_timeout_s``: a node that is still building its token cache
    arrives late, and that wait happens in the rendezvous store, before any collective exists
    for NCCL's watchdog to abort; every ``report_interval_s`` of it is reported
    (``minimind.training.distributed.rendezvous``), and a rank that stopped before arriving stops this one
    (``PeerStartError``). On CPU ranks, then unlink this rank's all-reduce buffer name. Collective.
    """
    world = launched_world()
    export_torch_variables(world)
    accelerator = get_accelerator()
    device_index = local_device_index()
    if accelerator.device_name() != "cpu":
        use_device(device_index)
    # torch's own default (tear down on a NCCL error or timeout, so the job ends instead of hanging),
    # made explicit so that an inherited setting that turned it off does not survive
    os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "3"
    timeout = timedelta(seconds=timeout_s) if timeout_s is not None else None
    # torch's env:// rendezvous (rank 0's store, or torchrun's agent store), with the long timeout
    store, rank, size = connect(world.rank, rendezvous_timeout_s, report_interval_s)
    wait_for_every_rank(store, rank, size, rendezvous_timeout_s, report_interval_s)
    if timeout is not None:
        store.set_timeout(timeout)
    backend = accelerator.communication_backend_name()
    device_id = torch.device("cuda", device_index) if binds_nccl_device(backend, size) else None
    dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout, device_id=device_id)
    deepspeed.init_distributed(dist_backend=backend, **({} if timeout is None else {"timeout": timeout}))
    if accelerator.device_name() == "cpu":
        unlink_allreduce_buffer()
    return world


def leave_process_group() -> None:
    """Destroy this process's process group, if it joined one, and the groups DeepSpeed cached over it: at
    the end of a run, or after every rank raised the same error, so that a caller in the same process (a
    test, a notebook, a sweep) starts clean."""
    if deepspeed.comm.is_initialized():
        deepspeed.comm.destroy_process_group()
    elif dist.is_initialized():  # the group started, DeepSpeed's backend did not
        dist.destroy_process_group()


def binds_nccl_device(backend: str, size: int) -> bool:
    """Whether to bind the rank's GPU when the group starts, as ``deepspeed.init_distributed`` does:
    NCCL with more than one rank, except on torch 2.6.x, where binding hangs (pytorch#153960)."""
    return backend == "nccl" and size > 1 and not (
        version.parse("2.6.0") < version.parse(torch.__version__) < version.parse("2.7.1"))


def tell_the_other_ranks(error: UserInputError, rendezvous_timeout_s: float = DEFAULT_RENDEZVOUS_TIMEOUT_S,
                         report_interval_s: float = DEFAULT_REPORT_INTERVAL_S) -> None:
    """After this rank stopped with ``error`` before the process group, make the others stop too.

    A ``PeerStartError`` came from the store: this rank only counts itself out. Any other error is
    written into the rendezvous store (reached as ``init_process_group`` reaches it, waiting up
    to ``rendezvous_timeout_s`` for the master), where the waiting ranks read it. Nothing happens
    once the process group exists (every rank raised alike), in a world of one, or where the
    master is unknown (MPI without ``MASTER_ADDR``: only a collective discovery would find it).
    """
    if dist.is_initialized():
        return
    if isinstance(error, PeerStartError):
        leave_after_failure(error.store, error.rank, error.size, rendezvous_timeout_s, report_interval_s)
        return
    try:
        world = launched_world()
        if world.size == 1 or ("MASTER_ADDR" not in os.environ and world.launcher != "slurm"):
            return
        export_torch_variables(world)
        store, rank, size = connect(world.rank, rendezvous_timeout_s, report_interval_s)
    except (UserInputError, RuntimeError, ValueError):  # no usable launcher or master: nobody to tell
        return
    record_failure(store, rank, error)
    leave_after_failure(store, rank, size, rendezvous_timeout_s, report_interval_s)


def export_torch_variables(world: LaunchedWorld, environ=None) -> None:
    """Set torch's rendezvous variables in ``environ`` (default ``os.environ``) for a launcher that
    sets other names, or for no launcher; a torch-style launcher's are left as they are."""
    environ = os.environ if environ is None else environ
    if world.launcher == TORCH_LAUNCHER:
        return
    if world.launcher == NO_LAUNCHER:
        environ["MASTER_ADDR"] = "127.0.0.1"  # never a master left over in the shell
        environ.setdefault("MASTER_PORT", str(free_local_port()))
    elif "MASTER_ADDR" not in environ:
        if world.launcher == "slurm":
            environ["MASTER_ADDR"] = first_slurm_host(environ)
        elif importlib.util.find_spec("mpi4py") is not None:
            # DeepSpeed's MPI discovery: rank 0's address broadcast over MPI; it sets every variable
            mpi_discovery(distributed_port=int(environ.get("MASTER_PORT", DEFAULT_MASTER_PORT)), verbose=False)
            return
        else:
            raise LauncherError(f"started by {world.launcher} without MASTER_ADDR: pip install mpi4py (DeepSpeed then "
                                "finds the master through MPI), or export MASTER_ADDR and MASTER_PORT to all ranks")
    environ.setdefault("MASTER_PORT", str(default_master_port(environ)))
    environ.update(RANK=str(world.rank), WORLD_SIZE=str(world.size), LOCAL_RANK=str(world.local_rank))


def default_master_port(environ) -> int:
    """DeepSpeed's 29500, moved by the Slurm job id so that two jobs sharing a node do not meet."""
    job = environ.get("SLURM_JOB_ID", "")
    return 20000 + int(job) % 20000 if job.isdigit() else DEFAULT_MASTER_PORT


def use_device(index: int) -> None:
    """Make GPU ``index`` this rank's device, for torch and for DeepSpeed, which takes its device
    (and NCCL's bound device) from ``LOCAL_RANK``."""
    get_accelerator().set_device(index)
    if index == local_rank():
        return
    if "OMPI_COMM_WORLD_LOCAL_RANK" in os.environ:  # DeepSpeed asserts LOCAL_RANK equals it
        raise LauncherError(f"OpenMPI local rank {local_rank()} sees one GPU; DeepSpeed needs every rank of a node "
                            "to see all of the node's GPUs under OpenMPI")
    os.environ["LOCAL_RANK"] = str(index)


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
    """This rank's accelerator on its node: its local rank, or device 0 where it sees one device
    only (Slurm's ``--gpus-per-task=1`` shows each task its own GPU as device 0). A one-line
    ``LauncherError`` where the node's ranks would share a device (``check_one_device_per_rank``)."""
    index, visible = local_rank(), get_accelerator().device_count()
    if get_accelerator().device_name() == "cpu":
        return index
    check_one_device_per_rank(visible)
    if index < visible:
        return index
    if visible == 1:
        return 0
    raise LauncherError(f"local rank {index} but this process sees {visible} devices (CUDA_VISIBLE_DEVICES?): give "
                        "each rank one device or all of its node's")


def check_one_device_per_rank(visible: int) -> None:
    """Refuse, in one line, a node that runs more ranks than the ``visible`` devices each of them sees
    (a 2-rank launch on a one-GPU machine): every rank would map to a device another rank uses,
    and NCCL would stop at its first collective with "Duplicate GPU detected".

    The node's rank count comes from the launcher (``node_ranks``); without one nothing is
    checked. A rank of an MPI launcher that sees one device named alone in
    ``CUDA_VISIBLE_DEVICES`` was given a GPU of its own by a per-rank wrapper and passes;
    torchrun and DeepSpeed's launcher give all of a node's ranks the same devices.
    """
    node = node_ranks()
    if node is None or node.count <= visible:
        return
    bound = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if node.launcher != TORCH_LAUNCHER and visible == 1 and len(bound) == 1:
        return
    accelerator = get_accelerator()
    if visible == 1:
        shared = f"{local_ranks(0, node.count - 1)} would all run on {accelerator.device_name(0)}"
    else:
        shared = (f"{local_ranks(visible, node.count - 1)} would share {accelerator.device_name(0)} to "
                  f"{accelerator.device_name(visible - 1)} with the others")
    raise LauncherError(
        f"{node.variable}={node.count} ranks on this node but this process sees {visible} device"
        f"{'s' if visible > 1 else ''}: {shared} (NCCL: Duplicate GPU detected); launch one rank per GPU "
        f"(deepspeed --num_gpus {visible}, torchrun --nproc_per_node {visible}) or give each rank its own "
        "(srun --gpus-per-task 1, or CUDA_VISIBLE_DEVICES set per rank under MPI)")


def local_ranks(first: int, last: int) -> str:
    """``local rank 2``, ``local ranks 0 and 1``, ``local ranks 2 to 5``: ``first`` through ``last``."""
    if first == last:
        return f"local rank {first}"
    return f"local ranks {first} {'and' if last == first + 1 else 'to'} {last}"


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
