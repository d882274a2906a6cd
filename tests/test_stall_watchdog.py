"""The project's own watchdog for a stuck collective: the status-5 line within its limit, before NCCL's
watchdog would abort the rank (exit 134) at the collective timeout; nothing while steps finish or while paused."""

import subprocess
import sys
import threading
import time

from minimind.training.distributed.stall_watchdog import LOST_A_PEER_STATUS, STALL_FRACTION, StallWatchdog
from tests.project_tree import REPO_ROOT


def test_a_rank_stuck_after_a_step_exits_with_the_lost_peer_line_and_status_within_the_limit():
    """A stand-in for a rank whose collective never returns (NCCL: the host blocks at its next sync):
    three steps finish, then the main thread waits forever."""
    collective_timeout_s = 4
    stuck_rank = ("import time\n"
                  "from minimind.training.distributed.stall_watchdog import STALL_FRACTION, StallWatchdog\n"
                  f"watchdog = StallWatchdog(1, STALL_FRACTION * {collective_timeout_s}).start()\n"
                  "for step in (1, 2, 3):\n    watchdog.beat(step)\n"
                  "print(time.monotonic(), flush=True)\n"
                  "time.sleep(600)\n")
    result = subprocess.run([sys.executable, "-c", stuck_rank], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60)
    elapsed = time.monotonic() - float(result.stdout)  # since the last step (one clock for every process)
    assert result.returncode == LOST_A_PEER_STATUS == 5
    limit_s = STALL_FRACTION * collective_timeout_s
    assert result.stderr == (f"pretrain_ds.py: stopped: rank 1: no optimizer step finished in {limit_s:.0f} s after "
                             f"step 3 ({STALL_FRACTION:g} x --collective_timeout): a collective with the other ranks "
                             "is stuck; another rank has probably died or stalled, see its own message\n")
    assert limit_s < elapsed < collective_timeout_s  # before the process group's own timeout


def test_steps_that_keep_finishing_and_paused_saves_never_stop_the_rank():
    stops = []
    watchdog = StallWatchdog(0, limit_s=0.5, stop=stops.append, poll_s=0.05).start()
    time.sleep(1.0)  # before the first step: a first compile is not counted
    for step in range(1, 11):
        watchdog.beat(step)
        time.sleep(0.1)
    with watchdog.paused():  # a save longer than the limit
        time.sleep(1.0)
    time.sleep(0.2)
    watchdog.close()
    assert stops == []


def test_a_stall_after_a_paused_save_is_still_noticed():
    stopped = threading.Event()
    watchdog = StallWatchdog(0, limit_s=0.5, stop=lambda message: stopped.set(), poll_s=0.05).start()
    watchdog.beat(1)
    with watchdog.paused():
        time.sleep(0.8)
    assert not stopped.is_set()
    assert stopped.wait(2.0)
    watchdog.close()
