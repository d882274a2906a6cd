"""Rank, world size and rendezvous variables from whichever launcher started the job (no processes launched)."""

import socket

import pytest
import torch.distributed as dist

import pretrain_ds
from minimind.training import stage_run
from minimind.training.distributed import process_group, rendezvous
from minimind.training.distributed.process_group import export_torch_variables
from minimind.training.distributed.world import NO_LAUNCHER, NODE_SIZE_VARIABLES, LauncherError, launched_world

LAUNCHERS = {
    "deepspeed/torchrun": {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"},
    "openmpi": {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1"},
    "mpich": {"PMI_RANK": "5", "PMI_SIZE": "8", "MPI_LOCALRANKID": "1"},
    "slurm": {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8"},
}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_each_launcher_s_variables_give_the_same_world(launcher):
    world = launched_world(LAUNCHERS[launcher])
    assert (world.launcher, world.rank, world.size, world.local_rank) == (launcher, 5, 8, 1)


def test_torch_variables_win_over_the_scheduler_s():
    """``srun torchrun ...``: Slurm describes the step's tasks (one per node), torchrun the ranks."""
    environ = {**LAUNCHERS["slurm"], "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2",
               "RANK": "3", "WORLD_SIZE": "16", "LOCAL_RANK": "3"}
    world = launched_world(environ)
    assert (world.launcher, world.rank, world.size) == ("deepspeed/torchrun", 3, 16)


def test_a_slurm_batch_script_is_not_a_task_of_a_step():
    """Inside ``sbatch --ntasks 8`` but outside ``srun``, one process runs alone."""
    world = launched_world({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_NODELIST": "gpu[01-02]"})
    assert (world.launcher, world.rank, world.size) == (NO_LAUNCHER, 0, 1)


def test_no_launcher_is_rank_0_of_1():
    world = launched_world({"PATH": "/usr/bin"})
    assert (world.launcher, world.rank, world.size, world.local_rank) == (NO_LAUNCHER, 0, 1, 0)
    assert "single process" in world.describe()


@pytest.mark.parametrize("environ, message", [
    ({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK='x' is not a non-negative integer"),
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK=2 is outside the world of WORLD_SIZE=2"),
    ({"PMI_RANK": "1", "PMI_SIZE": "4"}, "set LOCAL_RANK"),
])
def test_unusable_launcher_variables_are_one_line_errors(environ, message):
    with pytest.raises(LauncherError, match=message) as error:
        launched_world(environ)
    assert "\n" not in str(error.value)


def test_without_a_launcher_the_rendezvous_is_a_free_local_port():
    environ = {}
    export_torch_variables(launched_world(environ), environ)
    assert environ["RANK"] == "0" and environ["WORLD_SIZE"] == "1" and environ["LOCAL_RANK"] == "0"
    assert environ["MASTER_ADDR"] == "127.0.0.1"
    with socket.socket() as sock:  # the port is free to listen on
        sock.bind(("127.0.0.1", int(environ["MASTER_PORT"])))


def test_torch_style_launchers_are_left_alone():
    environ = {**LAUNCHERS["deepspeed/torchrun"], "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"}
    before = dict(environ)
    export_torch_variables(launched_world(environ), environ)
    assert environ == before


def test_mpi_with_an_exported_master_needs_no_mpi4py():
    environ = {**LAUNCHERS["openmpi"], "MASTER_ADDR": "10.0.0.1"}
    export_torch_variables(launched_world(environ), environ)
    assert (environ["RANK"], environ["WORLD_SIZE"], environ["LOCAL_RANK"], environ["MASTER_PORT"]) == \
        ("5", "8", "1", str(process_group.DEFAULT_MASTER_PORT))


def test_mpi_without_a_master_and_without_mpi4py_is_one_line(monkeypatch):
    monkeypatch.setattr(process_group.importlib.util, "find_spec", lambda name: None)
    environ = dict(LAUNCHERS["mpich"])
    with pytest.raises(LauncherError, match="pip install mpi4py"):
        export_torch_variables(launched_world(environ), environ)


def test_mpi_without_a_master_leaves_discovery_to_deepspeed_when_mpi4py_is_there(monkeypatch):
    monkeypatch.setattr(process_group.importlib.util, "find_spec", lambda name: object())
    discoveries = []
    monkeypatch.setattr(process_group, "mpi_discovery", lambda **kwargs: discoveries.append(kwargs))
    environ = {**LAUNCHERS["openmpi"], "MASTER_PORT": "23456"}
    export_torch_variables(launched_world(environ), environ)
    assert discoveries == [{"distributed_port": 23456, "verbose": False}]
    assert environ == {**LAUNCHERS["openmpi"], "MASTER_PORT": "23456"}  # DeepSpeed's discovery sets the rest


def test_slurm_s_master_is_the_first_host_of_the_step(monkeypatch):
    commands = []

    def fake_scontrol(command, **kwargs):
        commands.append(command)
        return process_group.subprocess.CompletedProcess(command, 0, stdout="gpu07\ngpu08\n")

    monkeypatch.setattr(process_group.subprocess, "run", fake_scontrol)
    environ = {**LAUNCHERS["slurm"], "SLURM_STEP_NODELIST": "gpu[07-08]"}
    export_torch_variables(launched_world(environ), environ)
    assert commands == [["scontrol", "show", "hostnames", "gpu[07-08]"]]
    assert (environ["MASTER_ADDR"], environ["RANK"], environ["WORLD_SIZE"], environ["LOCAL_RANK"]) == \
        ("gpu07", "5", "8", "1")


@pytest.fixture
def no_node_size(monkeypatch):
    """No launcher variable saying how many ranks share the node, and no device list, unless a test sets them."""
    for variable, _ in NODE_SIZE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.mark.usefixtures("no_node_size")
@pytest.mark.parametrize("local_rank, visible, expected", [(3, 8, 3), (3, 1, 0), (0, 1, 0)])
def test_a_rank_uses_its_local_rank_s_device_or_the_one_it_sees(monkeypatch, local_rank, visible, expected):
    """Slurm's one-GPU-per-task jobs show each task only its own GPU, as device 0."""
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setattr(process_group, "get_accelerator", lambda: FakeAccelerator(visible))
    assert process_group.local_device_index() == expected


@pytest.mark.usefixtures("no_node_size")
def test_two_ranks_are_never_put_on_one_gpu(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "5")
    monkeypatch.setattr(process_group, "get_accelerator", lambda: FakeAccelerator(4))
    with pytest.raises(LauncherError, match="local rank 5 but this process sees 4 devices"):
        process_group.local_device_index()


def test_a_remapped_gpu_becomes_deepspeed_s_local_rank(monkeypatch):
    """DeepSpeed takes the engine's device and NCCL's bound device from LOCAL_RANK."""
    accelerator = FakeAccelerator(1)
    monkeypatch.setattr(process_group, "get_accelerator", lambda: accelerator)
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.delenv("OMPI_COMM_WORLD_LOCAL_RANK", raising=False)
    process_group.use_device(0)
    assert accelerator.current == 0 and process_group.os.environ["LOCAL_RANK"] == "0"
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3")  # DeepSpeed asserts the two agree
    with pytest.raises(LauncherError, match="OpenMPI local rank 3 sees one GPU"):
        process_group.use_device(0)


class FakeAccelerator:
    """DeepSpeed's accelerator surface that device selection and start-up use, with ``count`` visible GPUs
    (``name`` "cpu": a CPU rank)."""

    def __init__(self, count: int, name: str = "cuda"):
        self.count, self.current, self.name = count, None, name

    def device_name(self, index=None):
        return self.name if index is None or self.name == "cpu" else f"{self.name}:{index}"

    def is_fp16_supported(self):
        return True

    def device_count(self):
        return self.count

    def set_device(self, index):
        self.current = index


def test_srun_with_slurm_s_pmi2_plugin_is_slurm(monkeypatch):
    """PMI-2 sets PMI_RANK and PMI_SIZE for every srun task, but no MPICH local rank."""
    environ = {**LAUNCHERS["slurm"], "PMI_RANK": "5", "PMI_SIZE": "8"}
    world = launched_world(environ)
    assert (world.launcher, world.rank, world.size, world.local_rank) == ("slurm", 5, 8, 1)


def test_a_leftover_master_in_the_shell_does_not_reach_a_single_process():
    environ = {"MASTER_ADDR": "10.1.2.3"}
    export_torch_variables(launched_world(environ), environ)
    assert environ["MASTER_ADDR"] == "127.0.0.1"


def test_slurm_jobs_sharing_a_node_meet_on_different_ports(monkeypatch):
    ports = set()
    for job in ("81234", "81235"):
        environ = {**LAUNCHERS["slurm"], "MASTER_ADDR": "gpu07", "SLURM_JOB_ID": job}
        export_torch_variables(launched_world(environ), environ)
        ports.add(int(environ["MASTER_PORT"]))
    assert len(ports) == 2 and all(1024 < port < 65536 for port in ports)


class CountingStore:
    """The ``add``, ``set`` and ``check`` of a rendezvous store, with ``others`` ranks arriving one per poll."""

    def __init__(self, others: int):
        self.value, self.others, self.keys = 0, others, set()

    def add(self, key, amount):
        if amount == 0 and self.others:
            self.others -= 1
            self.value += 1
        self.value += amount
        return self.value

    def set(self, key, value):
        self.keys.add(key)

    def check(self, keys):
        return all(key in self.keys for key in keys)


def test_ranks_wait_in_the_store_until_every_rank_arrived(monkeypatch):
    monkeypatch.setattr(rendezvous, "POLL_S", 0.0)
    store = CountingStore(others=3)
    process_group.wait_for_every_rank(store, rank=1, size=4, timeout_s=10)
    assert store.value == 4 and store.others == 0


def test_a_rank_that_never_arrives_is_one_line_after_the_rendezvous_timeout(monkeypatch):
    monkeypatch.setattr(rendezvous, "POLL_S", 0.01)
    with pytest.raises(LauncherError, match=r"^1 of 2 ranks started within 0 s \(--rendezvous_timeout\); "
                                            r"missing: rank 1;"):
        process_group.wait_for_every_rank(CountingStore(others=0), rank=0, size=2, timeout_s=0.1)


@pytest.mark.parametrize("backend, size, torch_version, expected", [
    ("nccl", 8, "2.13.0", True), ("nccl", 1, "2.13.0", False), ("gloo", 8, "2.13.0", False),
    ("nccl", 8, "2.6.1", False), ("nccl", 8, "2.7.1", True), ("nccl", 8, "2.6.0", True),
])
def test_the_gpu_is_bound_at_start_as_deepspeed_binds_it(monkeypatch, backend, size, torch_version, expected):
    """DeepSpeed binds NCCL's device for a world above one, except on the torch releases where it hangs."""
    monkeypatch.setattr(process_group.torch, "__version__", torch_version)
    assert process_group.binds_nccl_device(backend, size) is expected


@pytest.mark.usefixtures("no_node_size")
@pytest.mark.parametrize("environ, visible, shared", [
    # torchrun --nproc_per_node 2 on a one-GPU machine
    ({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, 1, "local ranks 0 and 1 would all run on cuda:0"),
    # deepspeed --num_gpus 2 there: its launcher lists a GPU the machine does not have
    ({"LOCAL_RANK": "0", "LOCAL_SIZE": "2", "CUDA_VISIBLE_DEVICES": "0,1"}, 1,
     "local ranks 0 and 1 would all run on cuda:0"),
    # torchrun gives every rank the same devices, one here
    ({"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "3", "CUDA_VISIBLE_DEVICES": "0"}, 1,
     "local ranks 0 to 2 would all run on cuda:0"),
    ({"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "4"}, 2, "local ranks 2 and 3 would share cuda:0 to cuda:1"),
    ({"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "3"}, 2, "local rank 2 would share cuda:0 to cuda:1"),
    # mpirun -np 2 on a one-GPU machine
    ({"MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"}, 1, "local ranks 0 and 1 would all run on cuda:0"),
])
def test_ranks_that_would_share_a_gpu_are_refused_in_one_line(monkeypatch, environ, visible, shared):
    """Every rank of the node refuses, before the process group, instead of NCCL's "Duplicate GPU detected"."""
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(process_group, "get_accelerator", lambda: FakeAccelerator(visible))
    with pytest.raises(LauncherError) as error:
        process_group.local_device_index()
    message = str(error.value)
    assert "\n" not in message and shared in message, message
    size_variable = next(name for name in environ if name in dict(NODE_SIZE_VARIABLES))
    assert message.startswith(f"{size_variable}={environ[size_variable]} ranks on this node but this process sees "
                              f"{visible} device")
    assert f"deepspeed --num_gpus {visible}, torchrun --nproc_per_node {visible}" in message


@pytest.mark.usefixtures("no_node_size")
@pytest.mark.parametrize("environ, visible, name, expected", [
    ({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, 2, "cuda", 1),
    ({"LOCAL_RANK": "1", "LOCAL_SIZE": "2", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, 4, "cuda", 1),
    ({"LOCAL_RANK": "3"}, 1, "cuda", 0),  # srun --gpus-per-task 1: Slurm shows each task its own GPU as device 0
    # a per-rank wrapper under MPI (CUDA_VISIBLE_DEVICES=$MPI_LOCALRANKID): one GPU each
    ({"MPI_LOCALRANKID": "3", "MPI_LOCALNRANKS": "4", "CUDA_VISIBLE_DEVICES": "3"}, 1, "cuda", 0),
    ({"LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"}, 1, "cpu", 3),  # CPU ranks share the node's cores
])
def test_ranks_with_a_device_each_are_not_refused(monkeypatch, environ, visible, name, expected):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for variable, value in environ.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setattr(process_group, "get_accelerator", lambda: FakeAccelerator(visible, name))
    assert process_group.local_device_index() == expected


@pytest.mark.usefixtures("no_node_size")
def test_the_entry_point_refuses_two_ranks_on_one_gpu_before_anything_heavy(tmp_path, capsys, monkeypatch):
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MASTER_ADDR", raising=False)  # a run that got as far as the rendezvous fails, never waits
    for module in (stage_run, process_group):
        monkeypatch.setattr(module, "get_accelerator", lambda: FakeAccelerator(1))
    assert pretrain_ds.main(["--save_dir", str(tmp_path), "--kernels", "torch"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pretrain_ds.py: error: LOCAL_WORLD_SIZE=2 ranks on this node") and "\n" not in err
    assert not dist.is_initialized()
