"""Ending a rank whose training steps stopped finishing, with the project's status-5 line, before NCCL's watchdog.

Under NCCL a collective whose peer died or stalled does not fail in Python: after the process
group's timeout torch's own watchdog aborts the process (SIGABRT, exit status 134) with its
message. This watchdog counts host time between optimizer steps (a timestamp, no device
sync): once the loop has not finished a step for ``STALL_FRACTION`` of the collective timeout,
it writes the one line a lost peer gets (``pretrain_ds.py: stopped: ...``) and exits with status
5. It starts after the first step (a first compile may take long) and pauses around the
checkpoint save and the evaluation, whose own waits are left to the process group's timeout.
"""

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

LOST_A_PEER_STATUS = 5
STALL_FRACTION = 0.8  # of --collective_timeout: NCCL's watchdog counts from the stuck collective, later


def exit_lost_a_peer(message: str) -> None:
    """``pretrain_ds.py: stopped: {message}`` on stderr, then exit with status 5 at once (the main thread is
    stuck in a collective, so nothing else would run)."""
    sys.stderr.write(f"pretrain_ds.py: stopped: {message}\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(LOST_A_PEER_STATUS)


class StallWatchdog:
    """A daemon thread that calls ``stop(message)`` when ``beat`` has not been called for ``limit_s``."""

    def __init__(self, rank: int, limit_s: float, stop: Callable[[str], None] = exit_lost_a_peer,
                 poll_s: float | None = None):
        self.rank, self.limit_s, self.stop = rank, limit_s, stop
        self.poll_s = poll_s if poll_s is not None else min(1.0, limit_s / 10)
        self.last_beat: float | None = None  # None: not counting
        self.step = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.watch, name="stall-watchdog", daemon=True)

    def start(self) -> "StallWatchdog":
        self.thread.start()
        return self

    def beat(self, step: int) -> None:
        """The loop finished optimizer step ``step`` (host time only)."""
        self.step, self.last_beat = step, time.monotonic()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Not counting inside the block (a save, an evaluation); counting again from its end."""
        was_counting, self.last_beat = self.last_beat is not None, None
        try:
            yield
        finally:
            if was_counting:
                self.last_beat = time.monotonic()

    def close(self) -> None:
        self.done.set()
        self.thread.join()

    def watch(self) -> None:
        while not self.done.wait(self.poll_s):
            last = self.last_beat
            if last is not None and time.monotonic() - last > self.limit_s:
                self.stop(f"rank {self.rank}: no optimizer step finished in {self.limit_s:.0f} s after step "
                          f"{self.step} ({STALL_FRACTION:g} x --collective_timeout): a collective with the other "
                          "ranks is stuck; another rank has probably died or stalled, see its own message")
                return
