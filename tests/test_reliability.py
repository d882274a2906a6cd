"""Faults during training on 2 CPU ranks: non-finite steps, a rank dying, a job killed during a save."""

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch

from tests.launcher import (
    REPO_ROOT,
    launch,
    launch_command,
    launch_env,
    read_metrics,
    remove_shared_memory_buffers,
    write_corpus,
)

pytestmark = pytest.mark.slow

TINY = ["--hidden_size", "64", "--num_hidden_layers", "2", "--max_seq_len", "32", "--log_interval", "1",
        "--batch_size", "2", "--accumulation_steps", "1",
        "--deepspeed_config", str(REPO_ROOT / "ds_configs" / "zero2_fp32.json")]
ENTRY = "tests/fault_injection_entry.py"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="module")
def corpus(workdir) -> Path:
    return write_corpus(workdir / "corpus.jsonl")


@pytest.fixture(scope="module")
def env(workdir) -> dict:
    return {"MINIMIND_CACHE_DIR": str(workdir / "cache")}


def module_weights(save_dir: Path, tag: str) -> dict:
    path = save_dir / "checkpoints" / tag / "mp_rank_00_model_states.pt"
    return torch.load(path, weights_only=False)["module"]  # our own test checkpoint


def test_a_nonfinite_step_is_skipped_on_both_ranks_and_training_continues(workdir, corpus, env):
    save_dir = workdir / "nan_once"
    launch(2, [*TINY, "--data_path", str(corpus), "--save_dir", str(save_dir), "--max_steps", "5",
               "--save_interval", "1", "--keep_checkpoints", "10"],
           script=ENTRY, env={**env, "INJECT_NONFINITE_AT": "3"})
    metrics = read_metrics(save_dir)
    assert [m["skipped_steps"] for m in metrics] == [0, 0, 1, 1, 1]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics[3:])
    before, skipped, after = (module_weights(save_dir, f"step_{n}") for n in (2, 3, 4))
    assert all(torch.equal(before[k], skipped[k]) for k in before)
    assert any(not torch.equal(skipped[k], after[k]) for k in before)


def test_consecutive_nonfinite_steps_stop_the_run_with_the_last_good_state(workdir, corpus, env):
    save_dir = workdir / "nan_forever"
    result = launch(2, [*TINY, "--data_path", str(corpus), "--save_dir", str(save_dir), "--max_steps", "50",
                        "--save_interval", "1", "--keep_checkpoints", "10", "--max_nonfinite_steps", "3"],
                    script=ENTRY, env={**env, "INJECT_NONFINITE_AT": "3-1000"}, check=False)
    assert result.returncode != 0
    assert "3 optimizer steps in a row had non-finite gradients" in result.stderr + result.stdout
    assert (save_dir / "checkpoints" / "latest").read_text() == "step_5"
    good, final = module_weights(save_dir, "step_2"), module_weights(save_dir, "step_5")
    assert all(torch.equal(good[k], final[k]) for k in good)


def test_a_job_killed_during_a_save_keeps_latest_on_a_complete_checkpoint(workdir, corpus, env):
    save_dir = workdir / "killed_in_save"
    args = [*TINY, "--data_path", str(corpus), "--save_dir", str(save_dir), "--max_steps", "6", "--save_interval", "2"]
    result = launch(2, args, script=ENTRY, env={**env, "KILL_DURING_SAVE": "1:2"}, check=False)
    assert result.returncode != 0
    checkpoints = save_dir / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step_2"  # the save at step 4 never completed
    resumed = launch(2, [*args, "--from_resume", "1"], env=env)
    assert "resumed from" in resumed.stdout and "at step 2" in resumed.stdout
    assert [m["step"] for m in read_metrics(save_dir)][-4:] == [3, 4, 5, 6]
    assert (checkpoints / "latest").read_text() == "step_6"


def test_a_killed_rank_ends_the_job_promptly_with_an_error(workdir, corpus, env):
    save_dir = workdir / "sigkill"
    command = launch_command(2, [*TINY, "--data_path", str(corpus), "--save_dir", str(save_dir), "--max_steps", "500",
                                 "--save_interval", "1000"])
    launcher = subprocess.Popen(command, cwd=REPO_ROOT, env=launch_env(env), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (save_dir / "metrics.jsonl").is_file() or len(read_metrics(save_dir)) < 2:
            assert time.time() < deadline and launcher.poll() is None, "training did not start"
            time.sleep(0.5)
        victim = next(p for p in psutil.Process(launcher.pid).children(recursive=True)
                      if "--local_rank=1" in " ".join(p.cmdline()))
        killed_at = time.time()
        victim.kill()
        status = launcher.wait(timeout=120)
        elapsed = time.time() - killed_at
        print(f"job exited with status {status} {elapsed:.2f} s after rank 1 was killed")
        assert status != 0
        assert elapsed < 30
    finally:
        if launcher.poll() is None:
            launcher.kill()
        remove_shared_memory_buffers(launcher.args)


def test_sigterm_saves_the_current_step_and_resumes_exactly(workdir, corpus, env):
    args = [*TINY, "--data_path", str(corpus), "--max_steps", "30", "--save_interval", "1000"]
    uninterrupted_dir, stopped_dir = workdir / "uninterrupted", workdir / "stopped"
    launch(2, [*args, "--save_dir", str(uninterrupted_dir)], env=env)
    launcher = subprocess.Popen(launch_command(2, [*args, "--save_dir", str(stopped_dir)]), cwd=REPO_ROOT,
                                env=launch_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (stopped_dir / "metrics.jsonl").is_file() or len(read_metrics(stopped_dir)) < 2:
            assert time.time() < deadline and launcher.poll() is None, "training did not start"
            time.sleep(0.2)
        os.killpg(launcher.pid, signal.SIGTERM)  # what a scheduler does to a job before preemption
        output, _ = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        remove_shared_memory_buffers(launcher.args)
    stopped_at = read_metrics(stopped_dir)[-1]["step"]
    assert stopped_at < 30, "the run finished before the signal arrived"
    assert f"stopped by a signal after step {stopped_at}" in output
    assert "exits with return code" not in output  # every rank exited 0
    assert (stopped_dir / "checkpoints" / "latest").read_text() == f"step_{stopped_at}"
    launch(2, [*args, "--save_dir", str(stopped_dir), "--from_resume", "1"], env=env)
    resumed = {m["step"]: m["loss"] for m in read_metrics(stopped_dir)[stopped_at:]}
    expected = {m["step"]: m["loss"] for m in read_metrics(uninterrupted_dir)[stopped_at:]}
    assert list(resumed) == list(range(stopped_at + 1, 31))
    assert resumed == pytest.approx(expected, rel=1e-6, abs=0)
