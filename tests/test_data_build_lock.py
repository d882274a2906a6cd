"""One process builds, the others wait on the lock file (no collective), and a dead builder frees it."""

import fcntl
import subprocess
import sys
import threading
import time

import pytest

from minimind.data import DataError, build_lock
from minimind.data.build_lock import build_once


def test_a_second_process_waits_for_the_first_build_and_reuses_it(tmp_path, monkeypatch):
    monkeypatch.setattr(build_lock, "REPORT_EVERY_S", 0.0)
    target = tmp_path / "artifact"
    may_finish, started = threading.Event(), threading.Event()
    builds, waiter_lines, results = [], [], {}

    def slow_build(progress):
        builds.append("first")
        progress.report("42 of 100 MiB")
        started.set()
        assert may_finish.wait(10)
        target.write_text("done")

    def second_build(progress):
        builds.append("second")

    first = threading.Thread(target=lambda: results.update(first=build_once(target, target.exists, slow_build)))
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=lambda: results.update(
        second=build_once(target, target.exists, second_build, log=waiter_lines.append)))
    second.start()
    time.sleep(1.5)
    assert second.is_alive() and "second" not in results  # still waiting on the lock
    may_finish.set()
    first.join(10)
    second.join(10)
    assert results == {"first": True, "second": False} and builds == ["first"]
    assert waiter_lines and "42 of 100 MiB" in waiter_lines[0] and "waiting for another process" in waiter_lines[0]


def test_a_killed_builder_does_not_leave_the_others_waiting(tmp_path):
    target = tmp_path / "artifact"
    lock_path = tmp_path / ".artifact.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"handle = open({str(lock_path)!r}, 'a+')\n"
        "fcntl.flock(handle, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        holder.kill()
        holder.wait(10)
        built = build_once(target, target.exists, lambda progress: target.write_text("done"))
    finally:
        holder.kill()
    assert built and target.read_text() == "done"


def test_a_holder_whose_progress_stands_still_is_taken_for_dead(tmp_path, monkeypatch):
    """A network file system may keep a crashed node's lock: the waiters stop in one line."""
    monkeypatch.setattr(build_lock, "STALE_AFTER_S", 1.0)
    monkeypatch.setattr(build_lock, "POLL_S", 0.1)
    target = tmp_path / "artifact"
    lock_path = tmp_path / ".artifact.lock"
    with open(lock_path, "a+") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        holder.write("node7 pid 12, 30 s: tokenized 5.0 of 90.0 MiB\n")
        holder.flush()
        with pytest.raises(DataError, match=r"\.artifact\.lock: held with no progress for .* \(node7 pid 12"):
            build_once(target, target.exists, lambda progress: pytest.fail("built while locked"))
