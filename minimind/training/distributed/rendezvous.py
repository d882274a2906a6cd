"""Meeting the other ranks at start, in torch's ``env://`` rendezvous store, before any collective exists.

The store is hosted by rank 0 (torchrun's agent under torchrun) at ``MASTER_ADDR:MASTER_PORT``,
whichever launcher started the job. Waiting there may last up to ``--rendezvous_timeout``
(a node still tokenizing arrives late), so the wait says what it waits for, every
``--rendezvous_report_interval`` seconds:

- a rank that cannot reach the store yet: ``waiting for the master at ADDR:PORT`` and how to
  set them (a wrong address, e.g. the runner's pick from ``hostname -I``, shows here);
- rank 0, once it hosts the store: how many ranks have arrived and which have not.

A rank that stops before the process group (bad input on its node only) writes its one line
into the store (``record_failure``); every waiting rank reads it and stops with one
line naming that rank, its host and its message, instead of waiting out the timeout. The
store's host stays up until every other rank has read it, or for ``LINGER_S`` at most.
"""

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch.distributed as dist

from minimind.errors import UserInputError, first_line
from minimind.training.distributed.world import LauncherError

DEFAULT_REPORT_INTERVAL_S = 60
POLL_S = 1.0
MISSING_NAMED = 8  # missing ranks named in a progress line; the rest are counted
# How long the store's host stays up, at most, after a failed start for the other ranks to read why:
# a rank that has not arrived by then (a dead node) would otherwise hold the job for --rendezvous_timeout.
LINGER_S = 600
HOW_TO_SET_THE_MASTER = ("set by the deepspeed runner's --master_addr/--master_port (its default address is the first "
                         "of `hostname -I` on the first host), or MASTER_ADDR/MASTER_PORT for other launchers")


class PeerStartError(UserInputError):
    """Another rank stopped before the process group; the message names it and says why (one line)."""

    def __init__(self, message: str, store: dist.Store, rank: int, size: int):
        super().__init__(message)
        self.store, self.rank, self.size = store, rank, size


def store_keys() -> tuple[str, str, str]:
    """The keys of this start (a torchrun restart meets afresh): arrivals (prefix), the failure, the ranks that left."""
    prefix = f"minimind/start/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return f"{prefix}/arrived", f"{prefix}/failed", f"{prefix}/left"


def master_address() -> str:
    """``ADDR:PORT`` of the rendezvous store, as torch reads them."""
    return f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"


def hosts_the_store(rank: int) -> bool:
    """Whether this process's exit takes the store down: rank 0, unless torchrun's agent hosts it."""
    return rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true"


@contextmanager
def reporting_the_wait_for_the_master(rank: int, interval_s: float) -> Iterator[None]:
    """Around a connection to the store: every ``interval_s`` that it has not connected, a line saying so."""
    connected = threading.Event()
    started = time.monotonic()

    def report() -> None:
        while not connected.wait(interval_s):
            print(f"rank {rank} on {socket.gethostname()}: waiting for the master at {master_address()} for "
                  f"{time.monotonic() - started:.0f} s ({HOW_TO_SET_THE_MASTER})", flush=True)

    reporter = threading.Thread(target=report, name="rendezvous-report", daemon=True)
    reporter.start()
    try:
        yield
    finally:
        connected.set()
        reporter.join()


def connect(rank: int, timeout_s: float, interval_s: float) -> tuple[dist.Store, int, int]:
    """The store torch's ``env://`` rendezvous would reach (rank 0 hosts it, or torchrun's agent),
    waiting up to ``timeout_s`` for the master and reporting that wait; returns ``(store, rank, size)``.

    Unlike ``env://``, rank 0 does not wait inside the store's constructor for every other rank to
    connect: it goes on to ``wait_for_every_rank``, which counts and names them as they arrive."""
    size = int(os.environ["WORLD_SIZE"])
    address, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    timeout = timedelta(seconds=timeout_s)
    with reporting_the_wait_for_the_master(rank, interval_s):
        if not hosts_the_store(rank):
            return dist.TCPStore(address, port, size, is_master=False, timeout=timeout), rank, size
        return dist.TCPStore(address, port, size, is_master=True, timeout=timeout, wait_for_workers=False,
                             multi_tenant=True), rank, size


def wait_for_every_rank(store: dist.Store, rank: int, size: int, timeout_s: float,
                        interval_s: float = DEFAULT_REPORT_INTERVAL_S) -> None:
    """Return once all ``size`` ranks have arrived, counted in the rendezvous ``store`` (no collective
    exists yet). Rank 0 says every ``interval_s`` which ranks are missing; a rank that stopped before
    arriving is a ``PeerStartError`` naming it; a one-line ``LauncherError`` after ``timeout_s``."""
    arrived_prefix, failed_key, _ = store_keys()
    store.set(f"{arrived_prefix}/{rank}", socket.gethostname())
    arrived = store.add(arrived_prefix, 1)
    started = time.monotonic()
    next_report = started + interval_s
    while True:
        if store.check([failed_key]):
            raise PeerStartError(store.get(failed_key).decode(), store, rank, size)
        if arrived >= size:
            return
        now = time.monotonic()
        if now - started > timeout_s:
            raise LauncherError(f"{arrived} of {size} ranks started within {timeout_s:.0f} s "
                                f"(--rendezvous_timeout); missing: {missing_ranks(store, size, arrived)}; "
                                "see the missing ranks' own logs")
        if rank == 0 and now >= next_report:
            print(f"rendezvous: {arrived} of {size} ranks arrived in {now - started:.0f} s, waiting for "
                  f"{missing_ranks(store, size, arrived)}; master {master_address()} ({HOW_TO_SET_THE_MASTER})",
                  flush=True)
            next_report = now + interval_s
        time.sleep(min(POLL_S, interval_s))
        arrived = store.add(arrived_prefix, 0)


def missing_ranks(store: dist.Store, size: int, arrived: int) -> str:
    """``rank 3``, ``ranks 1, 5`` or ``ranks 1, 2, ... (12 in all)``: the ranks not yet in ``store``."""
    arrived_prefix, _, _ = store_keys()
    missing, expected = [], size - arrived
    for other in range(size):
        if len(missing) == min(expected, MISSING_NAMED):
            break
        if not store.check([f"{arrived_prefix}/{other}"]):
            missing.append(str(other))
    names = ", ".join(missing)
    if expected > len(missing):
        names += f", ... ({expected} in all)"
    return f"rank{'s' if expected > 1 else ''} {names}"


def record_failure(store: dist.Store, rank: int, error: BaseException) -> None:
    """Write this rank's one-line ``error`` where the waiting ranks read it (the first one written wins)."""
    _, failed_key, _ = store_keys()
    store.compare_set(failed_key, "", f"rank {rank} on {socket.gethostname()} stopped before the process group: "
                                      f"{first_line(error)}")


def leave_after_failure(store: dist.Store, rank: int, size: int, timeout_s: float,
                        interval_s: float = DEFAULT_REPORT_INTERVAL_S) -> None:
    """Count this rank out of a start that failed; the store's host then waits, up to ``timeout_s``,
    until every other rank has read why (saying so every ``interval_s``), so that none is left
    waiting for a master that is gone."""
    _, _, left_key = store_keys()
    left = store.add(left_key, 1)
    if not hosts_the_store(rank):
        return
    linger_s = min(timeout_s, LINGER_S)
    started = time.monotonic()
    next_report = started + interval_s
    while left < size:
        if time.monotonic() - started >= linger_s:
            print(f"rendezvous: stopped keeping the store up at {master_address()} after {linger_s:.0f} s; "
                  f"{size - left} of {size} ranks have not read why the job stops (they wait for the master "
                  "until --rendezvous_timeout, or until their launcher stops them)", flush=True)
            return
        if time.monotonic() >= next_report:
            print(f"rendezvous: keeping the store up at {master_address()} until every rank has read why the job "
                  f"stops: {left} of {size} have", flush=True)
            next_report += interval_s
        time.sleep(min(POLL_S, interval_s))
        left = store.add(left_key, 0)
