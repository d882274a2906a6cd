"""Rank, world size and rendezvous variables from whichever launcher started the job (no processes launched)."""

import socket

import pytest

from minimind.training import process_group
from minimind.training.process_group import export_torch_variables
from minimind.training.world import NO_LAUNCHER, LauncherError, launched_world

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
    environ = dict(LAUNCHERS["openmpi"])
    export_torch_variables(launched_world(environ), environ)
    assert environ == LAUNCHERS["openmpi"]


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


@pytest.mark.parametrize("local_rank, visible, expected", [(3, 8, 3), (3, 1, 0), (5, 4, 1)])
def test_a_rank_uses_its_local_rank_s_device_among_those_it_sees(monkeypatch, local_rank, visible, expected):
    """Slurm's one-GPU-per-task jobs show each task only its own GPU, as device 0."""
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setattr(process_group, "get_accelerator",
                        lambda: type("Accelerator", (), {"device_count": lambda self: visible})())
    assert process_group.local_device_index() == expected
