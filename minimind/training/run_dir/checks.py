"""Checking the output folder before any work starts: writable, the same folder on every node,
and room for the checkpoints."""

import os
import shutil
import socket
import uuid
from pathlib import Path

from minimind.errors import ConfigError
from minimind.model.precision import OPTIMIZER_STATE_BYTES_PER_PARAM
from minimind.training.distributed.collectives import all_gather_object, barrier, broadcast_object
from minimind.training.distributed.world import global_rank


def check_writable(save_dir: Path) -> None:
    """Create ``save_dir`` if needed and prove it writable with a trial file; raises ConfigError."""
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
        trial = save_dir / f".write-test-{uuid.uuid4().hex}"
        trial.write_bytes(b"\0" * 4096)
        trial.unlink()
    except OSError as error:
        raise ConfigError(f"--save_dir {save_dir}: not writable ({error.strerror or error})") from None
    if not os.access(save_dir, os.W_OK):
        raise ConfigError(f"--save_dir {save_dir}: not writable")


def check_shared(save_dir: Path) -> None:
    """Refuse, on every rank, a ``save_dir`` that is not the same folder on every node. Collective.

    Only global rank 0 writes ``latest``, prunes old checkpoints and writes DeepSpeed's model
    states and the ``.pth``, so a folder on per-node disks would leave the other nodes unable
    to resume (and their disks filling). Rank 0 writes a file with a random name there; every
    rank must see it.
    """
    probe = save_dir / broadcast_object(f".shared-check-{uuid.uuid4().hex}" if global_rank() == 0 else None)
    if global_rank() == 0:
        probe.write_text(probe.name)
    barrier()
    verdicts = all_gather_object((socket.gethostname(), probe.is_file()))
    if global_rank() == 0:
        probe.unlink()
    blind = sorted({host for host, sees in verdicts if not sees})
    if blind:
        raise ConfigError(f"--save_dir {save_dir}: not the same folder on every node ({', '.join(blind)} cannot see "
                          "a file rank 0 wrote there); checkpoints need a file system all nodes share")


def disk_space_warning(save_dir: Path, n_params: int, module_bytes_per_param: int, keep: int) -> str | None:
    """A one-line warning when ``save_dir``'s disk cannot hold ``keep`` checkpoints plus the one
    being written (pruning happens only after it is complete) and the ``.pth``; else None.

    A checkpoint holds, over all ranks, the module copy and the optimizer states of every parameter.
    """
    per_checkpoint = n_params * (module_bytes_per_param + OPTIMIZER_STATE_BYTES_PER_PARAM)
    needed = (max(keep, 1) + 1) * per_checkpoint + 2 * n_params
    free = shutil.disk_usage(save_dir).free
    if free >= needed:
        return None
    return (f"warning: {save_dir} has {free / 2**30:.1f} GiB free, but {max(keep, 1) + 1} checkpoints of about "
            f"{per_checkpoint / 2**30:.1f} GiB (--keep_checkpoints {keep}, plus the one being written) and the "
            f".pth need {needed / 2**30:.1f} GiB: a save will fail with the disk full")
