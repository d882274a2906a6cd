"""Running ``pretrain_ds.py`` (or a test entry point) through DeepSpeed's real launcher, or in this
process where one rank and no launcher is the scenario, the training settings the launched tests
share, and reading what the runs wrote."""

import base64
import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

import pretrain_ds
from minimind.report import read_metrics_file
from minimind.training.distributed.process_group import free_local_port, leave_process_group
from tests.project_tree import REPO_ROOT

DS_CONFIGS = REPO_ROOT / "ds_configs"
WORDS = (
    "the model reads tokens and predicts the next one while the optimizer updates weights after each "
    "step of gradient descent with a learning rate that follows a cosine from its peak down to a tenth"
).split()


# The shared 2-rank run (``reference_run`` in conftest): a 0.5M-parameter model, ZeRO-2 fp32,
# 2 ranks x micro-batch 2 x accumulation 2 = 8 windows of 32 tokens per step, 40 steps at a
# learning rate that visibly lowers the loss, a checkpoint every 10 steps (the newest 3 kept).
TINY_MODEL = ["--hidden_size", "64", "--num_hidden_layers", "2", "--max_seq_len", "32", "--log_interval", "1"]
FP32_CONFIG = DS_CONFIGS / "zero2_fp32.json"
REFERENCE_STEPS = 40
REFERENCE_SAVE_INTERVAL = 10
REFERENCE_TRAINING = [*TINY_MODEL, "--deepspeed_config", str(FP32_CONFIG), "--batch_size", "2", "--accumulation_steps",
                      "2", "--max_steps", str(REFERENCE_STEPS), "--learning_rate", "3e-3", "--save_interval",
                      str(REFERENCE_SAVE_INTERVAL)]
ONE_RANK_WHOLE_BATCH = [*REFERENCE_TRAINING, "--batch_size", "4"]  # the later flag wins
# What the reference run and the one-rank run evaluate, every 10 steps (the save interval) and at the end.
SAMPLE_TOKENS = 6


def evaluation_flags(eval_corpus: Path) -> list[str]:
    """Validation on ``eval_corpus`` and samples of the default prompts."""
    return ["--eval_data_path", str(eval_corpus), "--sample_prompts", "default", "--sample_tokens", str(SAMPLE_TOKENS)]
# ``pretrain_ds.py`` with faults injected where its environment asks (see that file).
FAULT_INJECTION_ENTRY = "tests/fault_injection_entry.py"


def short_training(config: Path, max_steps: int) -> list[str]:
    """``TINY_MODEL`` under the DeepSpeed config ``config``: ``max_steps`` steps of micro-batch 2, no accumulation."""
    return [*TINY_MODEL, "--deepspeed_config", str(config), "--batch_size", "2", "--accumulation_steps", "1",
            "--max_steps", str(max_steps)]


def config_with_updates(name: str, destination: Path, updates: dict) -> Path:
    """``ds_configs/{name}`` with each section of ``updates`` merged in, written to ``destination``."""
    config = json.loads((DS_CONFIGS / name).read_text())
    for section, values in updates.items():
        config[section].update(values)
    destination.write_text(json.dumps(config))
    return destination


def write_corpus(path: Path, lines: int = 600, seed: int = 0) -> Path:
    """A small JSON Lines corpus of seeded word sequences (a learnable distribution)."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(lines):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60)))
            handle.write(json.dumps({"text": text}) + "\n")
    return path


# False while a test not marked ``launch`` runs (conftest): the fast tier launches no ranks.
launches_allowed = True


class LaunchInFastTierError(AssertionError):
    """A test of the fast tier (not marked ``launch``) tried to launch DeepSpeed ranks."""


def refuse_launch_in_fast_tier() -> None:
    """Raise ``LaunchInFastTierError`` unless the running test is marked ``launch``."""
    if not launches_allowed:
        raise LaunchInFastTierError("this test launches DeepSpeed ranks: let it use the launch_dir fixture, directly "
                                    "or through a fixture, which marks it launch (tests/conftest.py)")


def launch_command(ranks: int, args: list[str], script: str = "pretrain_ds.py") -> list[str]:
    """What ``deepspeed --num_gpus ranks script args`` runs on this node, on a free port.

    That is DeepSpeed's per-node launcher, ``deepspeed.launcher.launch``, given the world the
    ``deepspeed`` runner would encode; calling it directly skips the runner's own start-up
    (seconds per launch). ``tests/test_multinode.py`` goes through the runner itself.
    """
    refuse_launch_in_fast_tier()
    world = base64.urlsafe_b64encode(json.dumps({"localhost": list(range(ranks))}).encode()).decode()
    return [sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world}",
            "--master_addr=127.0.0.1", "--master_port", str(free_local_port()), script, *args]


def master_port(command: list[str]) -> int:
    """The port after ``--master_port`` in a launch command."""
    return int(command[command.index("--master_port") + 1])


def shared_memory_buffers(port: int) -> list[Path]:
    """The ``/dev/shm`` all-reduce buffers of DeepSpeed's CPU backend that exist for a job on ``port``."""
    return list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))


def remove_shared_memory_buffers(port: int) -> None:
    """Delete what ``shared_memory_buffers`` finds: a run killed before its ranks unlinked them
    leaves 69 MB per rank, and dozens of such launches would fill ``/dev/shm``."""
    for buffer in shared_memory_buffers(port):
        buffer.unlink(missing_ok=True)


# What launched ranks run on, on a GPU node as on a CPU-only machine: DeepSpeed's CPU accelerator
# (gloo, the CPU demonstration's defaults, the /dev/shm all-reduce buffers of its CPU backend),
# the GPUs hidden from the launcher and from ranks that a launcher starts directly (mpirun), and a
# Triton kernel asked for by name interpreted on CPU. Without it DeepSpeed would pick CUDA there,
# and a 2-rank launch on a one-GPU node would put both ranks on cuda:0, which training refuses
# (``check_one_device_per_rank``). DeepSpeed's own launcher sets each rank's CUDA_VISIBLE_DEVICES
# to the rank's slot again; the CPU accelerator keeps such a rank off the GPU all the same.
CPU_RANKS = {"DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "", "TRITON_INTERPRET": "1"}


def launch_env(env: dict | None = None) -> dict:
    """The environment launched runs get: this one, the repository importable, CPU ranks
    (``CPU_RANKS``), plus ``env``."""
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), **CPU_RANKS, **(env or {})}


def launch(ranks: int, args: list[str], script: str = "pretrain_ds.py", env: dict | None = None,
           timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``launch_command`` from the repository root; see ``run_job``."""
    command = launch_command(ranks, args, script)
    return run_job(command, master_port(command), env, timeout, check)


def run_job(command: list[str], port: int, env: dict | None = None, timeout: int = 600,
            check: bool = True) -> subprocess.CompletedProcess:
    """Run ``command``, a job whose ranks meet on ``port``, from the repository root, output
    captured; fails the test on a non-zero exit, or on shared-memory buffers a successful run
    left behind, unless ``check`` is False."""
    refuse_launch_in_fast_tier()
    try:
        result = subprocess.run(command, cwd=REPO_ROOT, env=launch_env(env), capture_output=True, text=True,
                                timeout=timeout)
        leftover = shared_memory_buffers(port)
    finally:
        remove_shared_memory_buffers(port)
    if check and result.returncode != 0:
        raise AssertionError(f"launch failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    if check and leftover:
        raise AssertionError(f"the run left {[p.name for p in leftover]} in /dev/shm")
    return result


@contextlib.contextmanager
def started_job(ranks: int, args: list[str], env: dict | None = None, **popen_kwargs):
    """``launch_command`` started in its own session (yielded while it runs); on leaving, a job
    still running is killed, launcher and ranks, and its shared-memory buffers removed."""
    command = launch_command(ranks, args)
    launcher = subprocess.Popen(command, cwd=REPO_ROOT, env=launch_env(env), start_new_session=True, **popen_kwargs)
    try:
        yield launcher
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        remove_shared_memory_buffers(master_port(command))


@contextlib.contextmanager
def one_rank_in_this_process(env: dict | None = None):
    """A rank of a world of one in this process, started by the block (no launcher), ``env`` set while it
    runs. Afterwards this process is as it was: no process group and DeepSpeed's cached groups released
    (a finished run releases both itself; one that failed leaves them), so that the next run starts clean,
    and the environment (which the rendezvous fills in), the SIGTERM/SIGINT
    handlers and torch's thread count as before."""
    environ = dict(os.environ)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    threads = torch.get_num_threads()
    os.environ.update(env or {})
    try:
        yield
    finally:
        leave_process_group()  # a failed run leaves its group; a finished one has already left
        for name in set(os.environ) - set(environ):
            del os.environ[name]
        os.environ.update(environ)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        torch.set_num_threads(threads)


def main_in_process(args: list[str], env: dict | None = None, check: bool = True,
                    entry=pretrain_ds.main) -> subprocess.CompletedProcess:
    """``entry(args)`` (``pretrain_ds.main``, or another stage's script's) in this process
    (``one_rank_in_this_process``), with ``env`` set while it runs; its exit status and output, as ``launch``
    returns them (the output is also passed on to this process's own, which pytest shows for a failed test),
    failing the test on a non-zero status unless ``check`` is False."""
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with one_rank_in_this_process(env), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            status = entry(args)
    finally:
        sys.stdout.write(stdout.getvalue())
        sys.stderr.write(stderr.getvalue())
    name = f"{entry.__module__}.main"
    if check and status != 0:
        raise AssertionError(f"{name} failed ({status}):\n{stderr.getvalue()[-4000:]}")
    return subprocess.CompletedProcess([name, *args], status, stdout.getvalue(), stderr.getvalue())


def read_metrics(save_dir: Path) -> list[dict]:
    """The training records of ``{save_dir}/metrics.jsonl`` (one per logged step), as the report reads them."""
    return read_metrics_file(save_dir).training


def read_eval_rows(save_dir: Path) -> list[dict]:
    """The validation records of ``{save_dir}/metrics.jsonl`` (one per evaluation), as the report reads them."""
    return read_metrics_file(save_dir).validation


def read_samples(save_dir: Path) -> list[dict]:
    """The rows of ``{save_dir}/samples.jsonl`` (one per prompt per evaluation)."""
    return [json.loads(line) for line in (save_dir / "samples.jsonl").read_text().splitlines()]


def module_weights(save_dir: Path, tag: str) -> dict:
    """The module state of checkpoint ``tag`` under ``{save_dir}/checkpoints`` (a checkpoint this test wrote)."""
    path = save_dir / "checkpoints" / tag / "mp_rank_00_model_states.pt"
    return torch.load(path, weights_only=False)["module"]


def assert_weights_file_holds_the_masters(save_dir: Path, tag: str | None = None) -> tuple[dict, dict]:
    """DeepSpeed's own ``zero_to_fp32`` loads checkpoint ``tag`` (default: the latest) and the MiniMind
    ``.pth`` beside it holds those fp32 master weights rounded to fp16; returns both (masters, ``.pth``)."""
    master = get_fp32_state_dict_from_zero_checkpoint(str(save_dir / "checkpoints"), tag=tag)
    weights = torch.load(save_dir / "pretrain_64.pth", weights_only=True)
    assert all(torch.equal(weights[key], tensor.half()) for key, tensor in master.items())
    return master, weights


def assert_resumed_losses_equal_the_reference(save_dir: Path, reference_run: Path, from_step: int) -> None:
    """The resumed run's records (those after the last time the step count went back) continue the
    reference's losses from ``from_step`` on."""
    records = read_metrics(save_dir)
    restart = max((i for i in range(1, len(records)) if records[i]["step"] <= records[i - 1]["step"]), default=0)
    resumed = {m["step"]: m["loss"] for m in records[restart:] if m["step"] > from_step}
    expected = {m["step"]: m["loss"] for m in read_metrics(reference_run)[from_step:]}
    assert list(resumed) == list(range(from_step + 1, REFERENCE_STEPS + 1))
    assert resumed == pytest.approx(expected, rel=1e-6, abs=0)


def assert_losses_follow(actual: list[dict], expected: list[dict], exact_steps: int, rel: float) -> None:
    """Same steps and learning rates; losses within ``rel`` for ``exact_steps`` steps, then within a
    tolerance that allows float summation-order differences to grow over the later steps."""
    assert [m["step"] for m in actual] == [m["step"] for m in expected]
    for index, (a, b) in enumerate(zip(actual, expected, strict=True)):
        assert a["loss"] == pytest.approx(b["loss"], rel=rel if index < exact_steps else 1e-3), a["step"]
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12), a["step"]
