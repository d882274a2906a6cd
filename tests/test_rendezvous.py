"""The wait at start, in a real torch TCPStore on this machine (threads play the other ranks; nothing launched):
what rank 0 says while a rank is missing, what a rank says while the master is unreachable, and a rank
that stopped before arriving stopping the others."""

import re
import socket
import threading
import time

import pytest
import torch.distributed as dist

from minimind.errors import ConfigError
from minimind.training.distributed import rendezvous
from minimind.training.distributed.process_group import free_local_port, tell_the_other_ranks
from minimind.training.distributed.rendezvous import PeerStartError, wait_for_every_rank

INTERVAL_S = 1


@pytest.fixture
def master(monkeypatch):
    """Rank 0's store on a free local port, announced as torch's variables announce it; yields the port."""
    port = free_local_port()
    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    store = dist.TCPStore("127.0.0.1", port, 2, is_master=True, wait_for_workers=False)
    yield store, port


def client(port: int) -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", port, 2, is_master=False)


def test_rank_zero_names_the_missing_rank_and_the_master_every_interval_until_it_arrives(master, capsys):
    store, port = master
    delay_s = 3.5 * INTERVAL_S
    late = threading.Timer(delay_s, lambda: wait_for_every_rank(client(port), 1, 2, 30, INTERVAL_S))
    late.start()
    started = time.monotonic()
    wait_for_every_rank(store, 0, 2, timeout_s=30, interval_s=INTERVAL_S)
    waited = time.monotonic() - started
    late.join()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("rendezvous:")]
    assert waited >= delay_s
    # one line per interval waited (give or take the poll), each naming rank 1 and the master in use
    assert int(delay_s // INTERVAL_S) - 1 <= len(lines) <= int(delay_s // INTERVAL_S), lines
    for line in lines:
        assert re.match(r"rendezvous: 1 of 2 ranks arrived in \d+ s, waiting for rank 1; "
                        rf"master 127\.0\.0\.1:{port} \(", line), line
        assert "--master_addr/--master_port" in line and "MASTER_ADDR/MASTER_PORT" in line


def test_a_rank_that_cannot_reach_the_master_says_where_it_looks(monkeypatch, capsys):
    port = free_local_port()  # nothing listens there: a wrong --master_addr or --master_port
    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError):  # torch's connect timeout, here after 3 intervals
        rendezvous.connect(1, timeout_s=3 * INTERVAL_S, interval_s=INTERVAL_S)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 2, lines
    for line in lines:
        assert line.startswith(f"rank 1 on {socket.gethostname()}: waiting for the master at 127.0.0.1:{port} for ")
        assert "--master_addr/--master_port" in line and "MASTER_ADDR/MASTER_PORT" in line


def test_a_rank_that_stopped_before_arriving_stops_the_waiting_rank_with_its_line(master, monkeypatch):
    """Rank 1 fails its input checks on its own node: rank 0, waiting in the store, stops at once with
    rank 1's line instead of waiting out the rendezvous timeout; rank 1's exit then frees rank 0."""
    store, port = master
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    failure = ConfigError("--max_seq_len 9000 exceeds the model's max_position_embeddings 8192")
    failing = threading.Timer(1.0, tell_the_other_ranks, (failure, 30, INTERVAL_S))
    failing.start()
    started = time.monotonic()
    with pytest.raises(PeerStartError) as raised:
        wait_for_every_rank(store, 0, 2, timeout_s=600, interval_s=INTERVAL_S)
    failing.join()
    assert time.monotonic() - started < 10
    assert str(raised.value) == (f"rank 1 on {socket.gethostname()} stopped before the process group: "
                                 f"{failure}")
    assert raised.value.exit_status == 2
    left = time.monotonic()
    tell_the_other_ranks(raised.value, 600, INTERVAL_S)  # rank 0 hosts the store: every rank has read it
    assert time.monotonic() - left < 2


def test_rank_zero_hosts_the_store_without_waiting_for_the_other_ranks_to_connect(monkeypatch):
    """torch's ``env://`` rendezvous would block rank 0 until every rank connected, before it could
    report anything: here rank 0 returns with the store at once, and a later rank reaches it."""
    port = free_local_port()
    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "3"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    started = time.monotonic()
    store, rank, size = rendezvous.connect(0, timeout_s=60, interval_s=INTERVAL_S)
    assert (rank, size) == (0, 3) and time.monotonic() - started < 5
    later, _, _ = rendezvous.connect(2, timeout_s=60, interval_s=INTERVAL_S)
    later.set("seen", "by rank 2")
    assert store.get("seen") == b"by rank 2"


def test_the_store_host_stops_waiting_for_ranks_that_never_read_the_failure(master, monkeypatch, capsys):
    """A failed start on a job whose other rank never arrives (a dead node): rank 0 keeps the store up
    for ``LINGER_S`` at most, not for the whole rendezvous timeout, and says so in one line."""
    store, port = master
    monkeypatch.setattr(rendezvous, "LINGER_S", 2 * INTERVAL_S)
    started = time.monotonic()
    rendezvous.leave_after_failure(store, 0, 2, timeout_s=600, interval_s=INTERVAL_S)
    assert 2 * INTERVAL_S <= time.monotonic() - started < 2 * INTERVAL_S + 3
    (last,) = [line for line in capsys.readouterr().out.splitlines() if "stopped keeping" in line]
    assert last.startswith(f"rendezvous: stopped keeping the store up at 127.0.0.1:{port} after 2 s; "
                           "1 of 2 ranks have not read why")
