"""Checking the output folder before any work starts: writable, and room for the checkpoints."""

import os
import shutil
import uuid
from pathlib import Path

from minimind.plan import OPTIMIZER_STATE_BYTES_PER_PARAM


def check_writable(save_dir: Path) -> None:
    """Create ``save_dir`` if needed and prove it writable with a trial file; raises PermissionError."""
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
        trial = save_dir / f".write-test-{uuid.uuid4().hex}"
        trial.write_bytes(b"\0" * 4096)
        trial.unlink()
    except OSError as error:
        raise PermissionError(f"--save_dir {save_dir}: not writable ({error.strerror or error})") from None
    if not os.access(save_dir, os.W_OK):
        raise PermissionError(f"--save_dir {save_dir}: not writable")


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
