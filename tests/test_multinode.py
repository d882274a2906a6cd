"""Two "nodes" on this one machine through DeepSpeed's real launcher, with and without ssh.

``no_ssh``: a hostfile names two hosts of one slot each; each node is its own
``deepspeed --hostfile H --no_ssh --node_rank N --master_addr 127.0.0.1 --master_port P pretrain_ds.py ...``
process. With ``--no_ssh`` the runner starts ``deepspeed.launcher.launch`` locally for its
``--node_rank`` only, so the host names are never resolved: ranks meet at ``--master_addr``.

``pdsh``: the cluster path. The hostfile names 127.0.0.1 and 127.0.0.2, one ``deepspeed
--hostfile H`` starts both through DeepSpeed's default pdsh launcher over ssh, to an sshd the
test starts bound to those two addresses (skipped where openssh-server, pdsh or root is missing).

``openmpi``: ``deepspeed --launcher openmpi --force_multi`` with a one-host hostfile, so that
mpirun (not the local launcher) starts the ranks, with only OpenMPI's variables set (skipped
where OpenMPI or mpi4py is missing).

Each way the world of 2 must train exactly as the session's 2-rank single-node
``reference_run`` did. A ``--save_dir`` that is a different folder on each node is refused.
"""

import contextlib
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.launcher import (
    CPU_RANKS,
    REFERENCE_STEPS,
    REFERENCE_TRAINING,
    REPO_ROOT,
    free_local_port,
    launch_env,
    master_port,
    read_metrics,
    remove_shared_memory_buffers,
    run_job,
)

NODE_TIMEOUT_S = 240


def launch_two_nodes(tmp_path: Path, args: list[str], env: dict, own_folders: bool = False,
                     check: bool = True, node1_delay_s: float = 0.0) -> list[subprocess.CompletedProcess]:
    """Start node 0 and node 1 through ``deepspeed --no_ssh``; wait for both.

    ``own_folders``: each node runs in its own working directory (``tmp_path/node{N}``), so
    relative paths name a different folder on each, as per-node disks would.
    ``node1_delay_s``: node 1 starts that much later (a node still busy, e.g. tokenizing)."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("nodeA slots=1\nnodeB slots=1\n")
    port = free_local_port()
    full_env = launch_env(env)
    nodes = []
    for node_rank in (0, 1):
        command = [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--no_ssh",
                   "--node_rank", str(node_rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                   str(REPO_ROOT / "pretrain_ds.py"), *args]
        if node_rank == 1:
            time.sleep(node1_delay_s)
        folder = tmp_path / f"node{node_rank}" if own_folders else REPO_ROOT
        folder.mkdir(exist_ok=True)
        log = open(tmp_path / f"node{node_rank}.log", "w+")  # noqa: SIM115 - closed below
        nodes.append((subprocess.Popen(command, cwd=folder, env=full_env, stdout=log, stderr=subprocess.STDOUT,
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
        remove_shared_memory_buffers(master_port(process.args))
        log.seek(0)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, log.read()))
        log.close()
    for node_rank, result in enumerate(results):
        assert result.returncode == 0 or not check, f"node {node_rank} failed ({result.returncode}):\n" \
                                                    f"{result.stdout[-4000:]}"
    return results


def launch_two_nodes_over_ssh(tmp_path: Path, args: list[str], env: dict) -> subprocess.CompletedProcess:
    """One ``deepspeed --hostfile H --ssh_port P pretrain_ds.py ...``: DeepSpeed's default pdsh
    launcher reaches both loopback "nodes" through an sshd this test starts on 127.0.0.1/.2."""
    port = free_local_port()
    with running_sshd(tmp_path, port) as client_key:
        hostfile = tmp_path / "hostfile_ssh"
        hostfile.write_text("127.0.0.1 slots=1\n127.0.0.2 slots=1\n")
        env_file = tmp_path / "deepspeed_env"  # what .deepspeed_env does on a cluster: exported on every node
        # the nodes get no other variable of this environment but PYTHON*: CPU ranks go through the file too
        env_file.write_text("".join(f"{key}={value}\n" for key, value in {**CPU_RANKS, **env}.items()))
        ssh_options = f"-i {client_key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
        full_env = launch_env({"DS_ENV_FILE": str(env_file), "PDSH_SSH_ARGS_APPEND": ssh_options})
        command = [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--ssh_port",
                   str(port), "--no_ssh_check", "--master_addr", "127.0.0.1", "--master_port", str(free_local_port()),
                   "pretrain_ds.py", *args]
        result = subprocess.run(command, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True,
                                timeout=NODE_TIMEOUT_S)
    assert result.returncode == 0, f"pdsh launch failed ({result.returncode}):\n{result.stdout[-4000:]}\n" \
                                   f"{result.stderr[-4000:]}"
    return result


@contextlib.contextmanager
def running_sshd(folder: Path, port: int):
    """An sshd on 127.0.0.1 and 127.0.0.2 only, accepting one fresh key (yielded) for this user;
    its keys, configuration and pid file live in ``folder``, nothing system-wide changes."""
    for tool in ("sshd", "pdsh", "ssh-keygen"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).is_file():
            pytest.skip(f"{tool} is not installed (the pdsh launcher test needs openssh-server and pdsh)")
    if os.geteuid() != 0:
        pytest.skip("sshd needs root to start here")
    host_key, client_key = folder / "host_key", folder / "client_key"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (folder / "authorized_keys").write_text(Path(f"{client_key}.pub").read_text())
    config = folder / "sshd_config"
    config.write_text(f"Port {port}\nListenAddress 127.0.0.1\nListenAddress 127.0.0.2\nHostKey {host_key}\n"
                      f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPasswordAuthentication no\n"
                      f"PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
                      f"PidFile {folder / 'sshd.pid'}\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    sshd_path = shutil.which("sshd") or "/usr/sbin/sshd"
    daemon = subprocess.Popen([sshd_path, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 20
        while not port_open("127.0.0.2", port):
            assert daemon.poll() is None and time.time() < deadline, f"sshd did not start: {daemon.stderr.read()}"
            time.sleep(0.2)
        yield client_key
    finally:
        daemon.terminate()
        daemon.wait(timeout=20)


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


@pytest.mark.parametrize("launcher", ["no_ssh", "pdsh"])
def test_two_nodes_train_as_one_node_with_two_ranks(launcher, tmp_path, corpus, launch_env_vars, reference_run):
    multi = tmp_path / "two_nodes"
    args = [*REFERENCE_TRAINING, "--data_path", str(corpus), "--save_dir", str(multi)]
    if launcher == "no_ssh":
        node0, _ = launch_two_nodes(tmp_path, args, launch_env_vars)
        assert "nodeA" in node0.stdout and "nodeB" in node0.stdout  # the launcher read both hosts
    else:
        result = launch_two_nodes_over_ssh(tmp_path, args, launch_env_vars)
        assert "127.0.0.1,127.0.0.2" in result.stdout + result.stderr  # pdsh reached both hosts

    one, two = read_metrics(reference_run), read_metrics(multi)
    assert [m["step"] for m in two] == [m["step"] for m in one] == list(range(1, REFERENCE_STEPS + 1))
    for a, b in zip(one, two, strict=True):
        # Same world, data split and seeds; only the torch thread count per rank may differ,
        # which can change float summation order.
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6), a["step"]


def test_a_save_dir_the_nodes_do_not_share_is_refused_in_one_line(tmp_path, corpus, launch_env_vars, reference_run):
    """``--save_dir out`` resolved on per-node disks: only rank 0 writes ``latest`` and the model
    states, so node B could never resume; every rank stops at start with status 2."""
    args = [*REFERENCE_TRAINING, "--data_path", str(corpus), "--save_dir", "out"]
    results = launch_two_nodes(tmp_path, args, launch_env_vars, own_folders=True, check=False)
    for result in results:
        assert result.returncode != 0
        errors = [line for line in result.stdout.splitlines() if "pretrain_ds.py: error:" in line]
        assert len(errors) == 1 and "not the same folder on every node" in errors[0], result.stdout[-3000:]
        assert "Traceback" not in result.stdout
    assert not (tmp_path / "node0" / "out" / "checkpoints").exists()


def test_openmpi_launcher_trains_as_one_node_with_two_ranks(tmp_path, corpus, launch_env_vars, reference_run):
    """``deepspeed --launcher openmpi``: mpirun starts the ranks with only OMPI_COMM_WORLD_* set;
    the batch arithmetic must see a world of 2 before DeepSpeed's MPI discovery runs."""
    for tool in ("mpirun", "ompi_info"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (the OpenMPI launcher test needs openmpi-bin)")
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpi4py is not installed (DeepSpeed's MPI discovery needs it)")
    hostfile = tmp_path / "hostfile_mpi"
    hostfile.write_text("localhost slots=2\n")
    save_dir = tmp_path / "openmpi"
    port = free_local_port()
    mpirun_args = "--oversubscribe --mca btl_tcp_if_include lo" + (" --allow-run-as-root" if os.geteuid() == 0 else "")
    # --force_multi: with one host in the hostfile the runner would otherwise quietly use its local launcher
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--launcher", "openmpi", "--force_multi",
               "--no_ssh_check", "--hostfile", str(hostfile), "--launcher_args", mpirun_args, "--master_addr",
               "127.0.0.1", "--master_port", str(port), "pretrain_ds.py", *REFERENCE_TRAINING, "--data_path",
               str(corpus), "--save_dir", str(save_dir)]
    result = run_job(command, port, env={**launch_env_vars, "MASTER_PORT": str(port)}, timeout=NODE_TIMEOUT_S)
    assert "cmd = mpirun -n 2" in result.stdout + result.stderr  # the runner really went through mpirun
    assert "launcher: openmpi, 2 processes" in result.stdout  # and the ranks saw only OpenMPI's variables
    one, two = read_metrics(reference_run), read_metrics(save_dir)
    assert [m["step"] for m in two] == list(range(1, REFERENCE_STEPS + 1))
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6), a["step"]


def test_a_node_arriving_later_than_the_collective_timeout_still_joins(tmp_path, corpus, launch_env_vars,
                                                                      reference_run):
    """Node 1 starts 15 s after node 0 (as a node still tokenizing would) with collectives that
    give up after 5 s: the ranks meet in the rendezvous store, which waits --rendezvous_timeout.
    Meanwhile rank 0 says every --rendezvous_report_interval (1 s) that it waits for rank 1, and at
    which master address and port."""
    args = [*REFERENCE_TRAINING, "--data_path", str(corpus), "--save_dir", str(tmp_path / "late"),
            "--max_steps", "3", "--collective_timeout", "5", "--rendezvous_report_interval", "1"]
    started = time.monotonic()
    node0, _ = launch_two_nodes(tmp_path, args, launch_env_vars, node1_delay_s=15)
    assert time.monotonic() - started > 15
    assert [m["step"] for m in read_metrics(tmp_path / "late")] == [1, 2, 3]
    port = master_port(node0.args)
    waits = [line for line in node0.stdout.splitlines() if "rendezvous: 1 of 2 ranks arrived" in line]
    assert len(waits) >= 3, node0.stdout[-3000:]  # node 1 came several intervals late
    assert all(re.search(rf"waiting for rank 1; master 127\.0\.0\.1:{port} \(set by the deepspeed runner's "
                         r"--master_addr/--master_port .*MASTER_ADDR/MASTER_PORT", line) for line in waits), waits


def test_a_node_whose_input_checks_fail_stops_the_other_node_at_once_with_its_line(tmp_path, corpus,
                                                                                  launch_env_vars):
    """``--tokenizer_path tok`` exists in node 0's folder only: node 1 stops in its input checks,
    before the process group, and node 0 stops with node 1's line (status 2) instead of waiting
    out --rendezvous_timeout in the store."""
    shutil.copytree(REPO_ROOT / "minimind" / "tokenizer" / "default", tmp_path / "node0" / "tok")
    rendezvous_timeout_s = 150
    args = [*REFERENCE_TRAINING, "--data_path", str(corpus), "--save_dir", str(tmp_path / "one_node_fails"),
            "--tokenizer_path", "tok", "--rendezvous_timeout", str(rendezvous_timeout_s)]
    started = time.monotonic()
    node0, node1 = launch_two_nodes(tmp_path, args, launch_env_vars, own_folders=True, check=False)
    elapsed = time.monotonic() - started
    (own,) = [line for line in node1.stdout.splitlines() if line.startswith("pretrain_ds.py: error:")]
    assert own == "pretrain_ds.py: error: tok: tokenizer folder not found"  # node 1's own folder has none
    (told,) = [line for line in node0.stdout.splitlines() if line.startswith("pretrain_ds.py: error:")]
    reason = own.removeprefix("pretrain_ds.py: error: ")
    assert re.fullmatch(rf"pretrain_ds\.py: error: rank 1 on \S+ stopped before the process group: {re.escape(reason)}",
                        told), told
    assert node0.returncode == node1.returncode == 2
    assert elapsed < rendezvous_timeout_s / 2, elapsed
    assert "Traceback" not in node0.stdout + node1.stdout
