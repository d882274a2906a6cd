"""A save folder belongs to one run: a lock while a run uses it, and no fresh run over old checkpoints.

Global rank 0 holds an exclusive ``flock`` on ``{save_dir}/.run.lock`` for the whole run and
writes who holds it there. A second run on the folder is refused in one line naming the
holder. The kernel releases the lock when its holder dies, however it dies, so the lock of a
killed job is free: the next run (a requeue with ``--from_resume 1``) takes it over and says
so. (On a network file system a dead node's lock lasts until its lease expires, about a
minute and a half on NFSv4; a requeue sooner than that is refused and can be started again.)
A fresh run (no resume flag) on a folder holding checkpoints is refused before any work,
naming ``--from_resume 1``, another folder, or ``--overwrite``, which starts over on purpose.
"""

import fcntl
import os
import shutil
import socket
import time
from pathlib import Path
from typing import TextIO

from minimind.checkpoint.locate import latest_tag, step_tags
from minimind.errors import ConfigError
from minimind.training.distributed.collectives import barrier, broadcast_object
from minimind.training.distributed.rank_print import print0
from minimind.training.distributed.world import global_rank
from minimind.training.run_dir.files import RUN_RECORDS

LOCK_NAME = ".run.lock"


def refuse_fresh_run_over_checkpoints(save_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Raise ``ConfigError`` when a run that neither resumes nor overwrites finds checkpoints in ``save_dir``."""
    if resuming and overwrite:
        raise ConfigError("--overwrite starts the run over; it cannot be combined with --from_resume or --resume_from")
    checkpoint_dir = save_dir / "checkpoints"
    if resuming or overwrite or (latest_tag(checkpoint_dir) is None and not step_tags(checkpoint_dir)):
        return
    raise ConfigError(f"--save_dir {save_dir} holds an earlier run's checkpoints ({checkpoint_dir}); resume it with "
                      "--from_resume 1, choose another --save_dir, or pass --overwrite to start over")


class SaveDirLock:
    """Rank 0's hold on ``{save_dir}/.run.lock`` (nothing on other ranks); ``release`` at the run's end."""

    def __init__(self, handle: TextIO | None):
        self.handle = handle

    def release(self) -> None:
        """Empty the lock file (a clean end leaves no holder to report) and let the lock go."""
        if self.handle is not None:
            self.handle.truncate(0)
            self.handle.close()
            self.handle = None


def claim_save_dir(save_dir: Path, overwrite: bool) -> SaveDirLock:
    """Take ``save_dir`` for this run on every rank together, or raise the same ``ConfigError`` on
    all of them when another run holds it; with ``overwrite``, then remove the earlier run's
    checkpoints and records (``RUN_RECORDS``). Collective."""
    handle, refusal = take_lock(save_dir / LOCK_NAME) if global_rank() == 0 else (None, None)
    refusal = broadcast_object(refusal)
    if refusal is not None:
        raise ConfigError(f"--save_dir {save_dir} is in use by another run ({refusal}); wait for it to end "
                          "or choose another --save_dir")
    if overwrite and global_rank() == 0:
        shutil.rmtree(save_dir / "checkpoints", ignore_errors=True)
        for name in RUN_RECORDS:
            (save_dir / name).unlink(missing_ok=True)
        print0(f"--overwrite: removed the earlier run's checkpoints, metrics and samples from {save_dir}")
    barrier()
    return SaveDirLock(handle)


def take_lock(path: Path) -> tuple[TextIO | None, str | None]:
    """``(open locked handle, None)``, or ``(None, who holds it)`` when another process does."""
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "holder unknown"
        handle.close()
        return None, holder
    except OSError as error:  # ENOLCK and the like: a file system without locks
        print0(f"warning: {path}: this file system has no locks ({error.strerror or error}); nothing stops a "
               "second run on this --save_dir")
        return handle, None
    handle.seek(0)
    previous = handle.read().strip()
    if previous:
        print0(f"--save_dir {path.parent}: the lock of an earlier run ({previous}) was left by a job that ended "
               "without releasing it; taking it over")
    handle.truncate(0)
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    return handle, None
