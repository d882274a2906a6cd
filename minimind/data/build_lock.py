"""One process builds, the others wait on a file: an exclusive lock beside what is being built.

Every rank of a node (and every node, where the cache folder is on a shared file system)
needs the same token cache. They all call ``build_once``: the first to take the lock builds,
the others poll the lock, now and then logging the progress the builder writes into it, and
then find the finished result. No collective is involved: under NCCL a barrier that waits
longer than the collective timeout is aborted by the watchdog, and tokenizing a large corpus
takes longer than that. The lock is ``fcntl.flock``, released by the kernel when its holder
dies, so a killed builder never leaves the others waiting; where a network file system keeps
a dead node's lock, the waiters give up once its progress line has stood still for
``STALE_AFTER_S`` (``HolderWatch``, which watches the locks of work units too: ``unit_claims``).
"""

import fcntl
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from minimind.data.jsonl_reader import DataError

POLL_S = 0.5
REPORT_EVERY_S = 30.0
STALE_AFTER_S = 600.0  # the builder rewrites its progress line at least every few seconds


class BuildProgress:
    """What the builder tells the waiters: a line it rewrites in the lock file."""

    def __init__(self, handle):
        self.handle = handle
        self.started = time.monotonic()

    def report(self, text: str) -> None:
        """Replace the lock file's line with ``text`` (prefixed by who builds and for how long)."""
        line = f"{socket.gethostname()} pid {os.getpid()}, {time.monotonic() - self.started:.0f} s: {text}\n"
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(line)
        self.handle.flush()


def build_once(target: Path, is_built: Callable[[], bool], build: Callable[[BuildProgress], None],
               log: Callable[[str], None] = print) -> bool:
    """Run ``build`` unless ``is_built()``, with at most one process building ``target`` at a time.

    ``build(progress)`` must leave ``is_built()`` true (write to a temporary name, rename at the
    end). Returns True when this process built it, False when it found it built (perhaps after
    waiting for another process). Where the file system has no locks, every process builds.
    """
    if is_built():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.with_name(f".{target.name}.lock")
    with open(lock_path, "a+", encoding="utf-8") as handle:
        locked = wait_for_lock(handle, lock_path, log)
        try:
            if locked and is_built():  # another process built it while this one waited
                return False
            progress = BuildProgress(handle)
            progress.report("started")
            build(progress)
            return True
        finally:
            if locked:
                fcntl.flock(handle, fcntl.LOCK_UN)


def wait_for_lock(handle, lock_path: Path, log: Callable[[str], None]) -> bool:
    """Take the exclusive lock on ``handle``, logging the holder's progress every ``REPORT_EVERY_S``
    while waiting; False when the file system does not support locks.

    A holder whose progress line has not changed for ``STALE_AFTER_S`` is taken for dead (a
    network file system can keep the lock of a crashed node): ``DataError`` naming the lock file.
    """
    last_report = None
    holder = HolderWatch(lock_path)
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        except OSError:  # ENOLCK and the like: no locking here
            return False
        line = holder.check()
        now = time.monotonic()
        if last_report is None or now - last_report >= REPORT_EVERY_S:
            log(f"waiting for another process to finish {lock_path.name[1:-5]} ({line})")
            last_report = now
        time.sleep(POLL_S)


class HolderWatch:
    """The progress line that the holder of a lock file last wrote, and how long it has stood still."""

    def __init__(self, lock_path: Path):
        self.lock_path = lock_path
        self.line = None
        self.unchanged_since = time.monotonic()

    def check(self) -> str:
        """The holder's line now; ``DataError`` naming the lock file once it has not changed for ``STALE_AFTER_S``."""
        line = self.lock_path.read_text(encoding="utf-8").strip() or "starting"
        now = time.monotonic()
        if line != self.line:
            self.line, self.unchanged_since = line, now
        elif now - self.unchanged_since > STALE_AFTER_S:
            raise DataError(self.lock_path, None, f"held with no progress for {now - self.unchanged_since:.0f} s "
                                                  f"({line}); if that process is gone, delete this file and start "
                                                  "again")
        return line
