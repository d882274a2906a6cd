"""Two "nodes" on this one machine through DeepSpeed's real launcher, without ssh.

A hostfile names two hosts of one slot each; each node is its own
``deepspeed --hostfile H --no_ssh --node_rank N --master_addr 127.0.0.1 --master_port P pretrain_ds.py ...``
process. With ``--no_ssh`` the runner starts ``deepspeed.launcher.launch`` locally for its
``--node_rank`` only, so the host names are never resolved: ranks meet at ``--master_addr``.
The world of 2 must train exactly as the session's 2-rank single-node ``reference_run`` did.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launcher import (
    REFERENCE_STEPS,
    REFERENCE_TRAINING,
    REPO_ROOT,
    free_port,
    read_metrics,
    remove_shared_memory_buffers,
)

pytestmark = pytest.mark.slow

NODE_TIMEOUT_S = 240


def launch_two_nodes(tmp_path: Path, args: list[str], env: dict) -> list[subprocess.CompletedProcess]:
    """Start node 0 and node 1 concurrently through ``deepspeed --no_ssh``; wait for both."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("nodeA slots=1\nnodeB slots=1\n")
    port = free_port()
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}
    nodes = []
    for node_rank in (0, 1):
        command = [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--no_ssh",
                   "--node_rank", str(node_rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                   "pretrain_ds.py", *args]
        log = open(tmp_path / f"node{node_rank}.log", "w+")  # noqa: SIM115 - closed below
        nodes.append((subprocess.Popen(command, cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True), log))
    results = []
    for process, log in nodes:
        try:
            process.wait(timeout=NODE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for other, _ in nodes:
                if other.poll() is None:
                    os.killpg(other.pid, 9)
                    other.wait()
        remove_shared_memory_buffers(process.args)
        log.seek(0)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, log.read()))
        log.close()
    for node_rank, result in enumerate(results):
        assert result.returncode == 0, f"node {node_rank} failed ({result.returncode}):\n{result.stdout[-4000:]}"
    return results


def test_two_nodes_train_as_one_node_with_two_ranks(tmp_path, corpus, launch_env_vars, reference_run):
    multi = tmp_path / "two_nodes"
    node0, _ = launch_two_nodes(tmp_path, [*REFERENCE_TRAINING, "--data_path", str(corpus), "--save_dir", str(multi)],
                                launch_env_vars)

    assert "nodeA" in node0.stdout and "nodeB" in node0.stdout  # the launcher read both hosts
    one, two = read_metrics(reference_run), read_metrics(multi)
    assert [m["step"] for m in two] == [m["step"] for m in one] == list(range(1, REFERENCE_STEPS + 1))
    for a, b in zip(one, two, strict=True):
        # Same world, data split and seeds; only the torch thread count per rank may differ,
        # which can change float summation order.
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6), a["step"]
