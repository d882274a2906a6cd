"""Who this process is in the job: its rank, the world size and its local rank.

Once the process group exists these come from it. Before that (the checks that run before
anything heavy, the batch arithmetic among them) they come from the variables the launcher
set, read the way ``deepspeed.init_distributed`` and torch read them:

- ``deepspeed`` (pdsh, ``--no_ssh``, its local launcher) and ``torchrun``: ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``;
- OpenMPI's ``mpirun`` (``deepspeed --launcher openmpi``): ``OMPI_COMM_WORLD_RANK``,
  ``OMPI_COMM_WORLD_SIZE``, ``OMPI_COMM_WORLD_LOCAL_RANK``;
- MPICH and Intel MPI (``--launcher mpich``, ``impi``): ``PMI_RANK``, ``PMI_SIZE``,
  ``MPI_LOCALRANKID``;
- Slurm's ``srun`` (``--launcher slurm``): ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``,
  ``SLURM_LOCALID`` (a step's task count, not the allocation's ``SLURM_NTASKS``, which a
  batch script sees without being one of several tasks);
- none of them (``python pretrain_ds.py``, as MiniMind's users run its trainer): rank 0 of 1.

How many ranks run on this node comes from ``LOCAL_WORLD_SIZE`` (torchrun), ``LOCAL_SIZE``
(DeepSpeed's launcher), ``OMPI_COMM_WORLD_LOCAL_SIZE`` or ``MPI_LOCALNRANKS``; Slurm's own
variables do not say it simply (``SLURM_STEP_TASKS_PER_NODE`` is a list such as ``2(x3),1``).
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch.distributed as dist

from minimind.errors import UserInputError

TORCH_LAUNCHER = "deepspeed/torchrun"  # the launchers that set torch's own variables
# (launcher, rank variable, world-size variable, local-rank variable), in order of precedence.
LAUNCHER_VARIABLES = (
    (TORCH_LAUNCHER, "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("mpich", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("slurm", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"),
)
NO_LAUNCHER = "none"
# (variable giving the number of ranks on this node, launcher that sets it), in order of precedence.
NODE_SIZE_VARIABLES = (
    ("LOCAL_WORLD_SIZE", TORCH_LAUNCHER),  # torchrun
    ("LOCAL_SIZE", TORCH_LAUNCHER),  # DeepSpeed's launcher
    ("OMPI_COMM_WORLD_LOCAL_SIZE", "openmpi"),
    ("MPI_LOCALNRANKS", "mpich"),
)


class LauncherError(UserInputError):
    """The launcher's variables do not describe a usable world (one line)."""


@dataclass(frozen=True)
class LaunchedWorld:
    """This process's place in the job as its launcher describes it."""

    launcher: str
    rank: int
    size: int
    local_rank: int

    def describe(self) -> str:
        """One line: which launcher started the job and the world it gave."""
        if self.launcher == NO_LAUNCHER:
            return "launcher: none, a single process (rank 0 of 1)"
        return f"launcher: {self.launcher}, {self.size} process{'es' if self.size > 1 else ''}"


def launched_world(environ: Mapping[str, str] | None = None) -> LaunchedWorld:
    """The world the launcher's variables in ``environ`` (default: this process's) describe.

    A launcher whose rank and size are set but not its local rank is passed over for the next
    (Slurm's PMI-2 plugin sets ``PMI_RANK`` and ``PMI_SIZE`` for every ``srun`` task, without
    ``MPI_LOCALRANKID``); it is an error only when no later launcher describes the process.
    """
    environ = os.environ if environ is None else environ
    partial = None
    for launcher, rank_name, size_name, local_name in LAUNCHER_VARIABLES:
        if rank_name not in environ or size_name not in environ:
            continue
        rank, size = integer_variable(environ, rank_name), integer_variable(environ, size_name)
        if not 0 <= rank < size:
            raise LauncherError(f"{rank_name}={rank} is outside the world of {size_name}={size}")
        if local_name in environ or size == 1:
            local_rank = integer_variable(environ, local_name) if local_name in environ else 0
            return LaunchedWorld(launcher, rank, size, local_rank)
        partial = partial or (f"{launcher} set {rank_name} and {size_name} but not {local_name}; "
                              "set LOCAL_RANK (this process's index on its node)")
    if partial is not None:
        raise LauncherError(partial)
    return LaunchedWorld(NO_LAUNCHER, 0, 1, 0)


def integer_variable(environ: Mapping[str, str], name: str) -> int:
    """``environ[name]`` as a non-negative integer, or a one-line ``LauncherError``."""
    value = environ[name]
    if not value.strip().isdigit():
        raise LauncherError(f"environment variable {name}={value!r} is not a non-negative integer")
    return int(value)


def global_rank() -> int:
    """This process's rank: the process group's, or the launcher's before it exists."""
    return dist.get_rank() if dist.is_initialized() else launched_world().rank


def world_size() -> int:
    """Number of processes in the job: the process group's, or the launcher's before it exists."""
    return dist.get_world_size() if dist.is_initialized() else launched_world().size


@dataclass(frozen=True)
class NodeRanks:
    """How many ranks run on this node, the variable that says so and the launcher that set it."""

    count: int
    variable: str
    launcher: str


def node_ranks(environ: Mapping[str, str] | None = None) -> NodeRanks | None:
    """The ranks on this node as the launcher's variables in ``environ`` (default: this process's) give
    them; None where no launcher says (none, or Slurm)."""
    environ = os.environ if environ is None else environ
    for variable, launcher in NODE_SIZE_VARIABLES:
        if variable in environ:
            return NodeRanks(integer_variable(environ, variable), variable, launcher)
    return None


def local_rank() -> int:
    """This process's index on its node, as the launcher (or DeepSpeed's MPI discovery) set it."""
    if "LOCAL_RANK" in os.environ:
        return integer_variable(os.environ, "LOCAL_RANK")
    return launched_world().local_rank
