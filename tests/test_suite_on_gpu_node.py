"""The suite on a GPU node: what the tests that train in process or launch ranks see there,
faked on this machine. They run on DeepSpeed's CPU accelerator (gloo, CPU tensors) as on a
CPU-only machine (``tests/conftest.py``, ``tests.launcher.CPU_RANKS``); a 2-rank launch on a
one-GPU node would otherwise put both ranks on cuda:0, which training refuses at start."""

import json
import os
import subprocess
import sys

import pytest
import torch
from deepspeed.accelerator import real_accelerator

import pretrain_ds
from minimind.training.distributed import process_group
from tests.launcher import launch_env
from tests.project_tree import REPO_ROOT

# A one-GPU node as torch sees it, then what a process there gets: DeepSpeed's accelerator and
# this rank's device. The fake driver has device 0 only; CUDA_VISIBLE_DEVICES shows the listed
# devices up to the first that does not exist (an empty value, none), as the CUDA runtime does.
# With the argument ``pytest``, the process first imports ``tests/conftest.py`` as pytest does.
ONE_GPU_NODE_PROCESS = """
import json, os, sys
import torch
listed = os.environ.get("CUDA_VISIBLE_DEVICES")
visible = 1 if listed is None else int(listed.split(",")[0].strip() == "0")
torch.cuda.device_count = lambda: visible
torch.cuda.is_available = lambda: visible > 0
if sys.argv[1:] == ["pytest"]:
    import tests.conftest
from deepspeed.accelerator import get_accelerator
from minimind.training.distributed import process_group
from minimind.training.distributed.world import LauncherError
try:
    device = get_accelerator().device_name(process_group.local_device_index())
except LauncherError as error:
    device = f"refused: {error}"
# AutoEP's SwiGLU on CPU tensors, against the plain expression
from deepspeed.ops.triton_ops import swiglu
gate, up = torch.linspace(-4, 4, 96).view(8, 12), torch.linspace(2, -1, 96).view(8, 12)
try:
    swiglu_error = (swiglu(gate, up) - torch.nn.functional.silu(gate) * up).abs().max().item()
except Exception as error:
    swiglu_error = f"{type(error).__name__}: {error}"
accelerator = get_accelerator()
print(json.dumps({"accelerator": accelerator.device_name(), "backend": accelerator.communication_backend_name(),
                  "cuda_devices": torch.cuda.device_count(), "device": device,
                  "triton_interpret": os.environ.get("TRITON_INTERPRET"), "swiglu_on_cpu": swiglu_error}))
"""


@pytest.fixture
def gpu_node_shell(monkeypatch):
    """This process's environment as a login shell on a GPU node leaves it: no accelerator chosen,
    no device list, Triton compiling (conftest sets TRITON_INTERPRET only where CUDA is missing)."""
    for name in ("DS_ACCELERATOR", "CUDA_VISIBLE_DEVICES", "TRITON_INTERPRET"):
        monkeypatch.delenv(name, raising=False)


def one_gpu_node_process(env: dict, *args: str) -> dict:
    """What ``ONE_GPU_NODE_PROCESS`` reports, run with the environment ``env`` and arguments ``args``."""
    result = subprocess.run([sys.executable, "-c", ONE_GPU_NODE_PROCESS, *args], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_fake_node_would_put_two_ranks_on_one_gpu(gpu_node_shell):
    """The fake is a GPU node: without CPU ranks, rank 1 of a 2-rank launch is refused (cuda:0 taken)
    and DeepSpeed's Triton ops would compile for the CPU tensors of an in-process run."""
    env = {**launch_env(), "DS_ACCELERATOR": "cuda", "CUDA_VISIBLE_DEVICES": "0,1", "LOCAL_RANK": "1",
           "LOCAL_WORLD_SIZE": "2", "TRITON_INTERPRET": "0"}
    seen = one_gpu_node_process(env)
    assert (seen["accelerator"], seen["backend"], seen["cuda_devices"]) == ("cuda", "nccl", 1)
    assert seen["device"].startswith("refused: LOCAL_WORLD_SIZE=2 ranks on this node but this process sees 1 device")
    # and DeepSpeed's SwiGLU compiles its Triton kernel for CPU tensors (no driver here to compile with)
    assert isinstance(seen["swiglu_on_cpu"], str)


@pytest.mark.parametrize("started_by", ["launcher", "deepspeed.launcher.launch"])
def test_launched_ranks_run_on_the_cpu_of_a_gpu_node(gpu_node_shell, started_by):
    """A launched run's environment (``launch_env``): the process the test starts sees no GPU; a rank
    that DeepSpeed's launcher starts, which lists the rank's slots in CUDA_VISIBLE_DEVICES again
    (0 and 1 for 2 ranks on this node), may see GPU 0 but still runs on DeepSpeed's CPU accelerator
    over gloo, on its own CPU "device", with Triton kernels interpreted."""
    env = launch_env({"MINIMIND_CACHE_DIR": "/tmp/cache"})
    assert env["MINIMIND_CACHE_DIR"] == "/tmp/cache" and env["PYTHONPATH"] == str(REPO_ROOT)
    expected_cuda_devices = 0
    if started_by == "deepspeed.launcher.launch":
        env.update(CUDA_VISIBLE_DEVICES="0,1", RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2")
        expected_cuda_devices = 1
    seen = one_gpu_node_process(env)
    # where the rank sees GPU 0, DeepSpeed's SwiGLU runs its Triton kernel, interpreted: float32 rounding
    assert seen.pop("swiglu_on_cpu") <= 1e-6
    assert seen == {"accelerator": "cpu", "backend": "gloo", "cuda_devices": expected_cuda_devices,
                    "device": "cpu", "triton_interpret": "1"}


def test_a_pytest_session_picks_the_cpu_accelerator_before_deepspeed_caches_its_choice(gpu_node_shell):
    """DeepSpeed picks its accelerator once, while it is imported; ``tests/conftest.py``, which pytest
    imports first, has chosen the CPU one by then, and leaves the GPU to torch. DeepSpeed's Triton ops,
    which would otherwise run compiled kernels on CPU tensors there, take their PyTorch path."""
    seen = one_gpu_node_process({**os.environ, "PYTHONPATH": str(REPO_ROOT)}, "pytest")
    assert seen == {"accelerator": "cpu", "backend": "gloo", "cuda_devices": 1, "device": "cpu",
                    "triton_interpret": None, "swiglu_on_cpu": 0.0}  # its PyTorch path, the reference itself


def test_in_process_runs_train_on_the_cpu_of_a_gpu_node(monkeypatch, tmp_path, capsys):
    """``pretrain_ds.main`` inside pytest on a faked one-GPU node, with this session's environment
    (Triton compiling, as there): DeepSpeed, choosing its accelerator afresh, picks the CPU one, and
    the run asks for the Triton kernels on CPU, not on cuda:0."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(real_accelerator, "ds_accelerator", None)  # as before the session's first choice
    monkeypatch.setattr(process_group, "node_ranks", lambda: None)  # a run without a launcher
    assert real_accelerator.get_accelerator().device_name() == "cpu"
    assert real_accelerator.get_accelerator().communication_backend_name() == "gloo"
    assert pretrain_ds.main(["--save_dir", str(tmp_path), "--kernels", "triton"]) == 2
    assert "--kernels triton cannot run: Triton kernels need a CUDA device (got cpu)" in capsys.readouterr().err
