"""Faults during training on 2 CPU ranks: non-finite steps, a rank dying, a job killed during a save,
a full disk during a save, a scheduler's SIGTERM.

Runs that resume are compared with the session's uninterrupted ``reference_run``; the faulty
runs use its settings (``REFERENCE_TRAINING``) so that their steps are the same steps.
"""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import torch

from tests.launcher import (
    DS_CONFIGS,
    FAULT_INJECTION_ENTRY,
    FP32_CONFIG,
    REFERENCE_SAVE_INTERVAL,
    REFERENCE_STEPS,
    REFERENCE_TRAINING,
    assert_resumed_losses_equal_the_reference,
    assert_weights_file_holds_the_masters,
    launch,
    module_weights,
    read_metrics,
    short_training,
    started_job,
    write_corpus,
)


def launch_failing_reference_training(save_dir: Path, corpus: Path, env: dict,
                                      fault: dict) -> subprocess.CompletedProcess:
    """``REFERENCE_TRAINING`` on 2 ranks through the fault-injection entry, ``fault`` added to ``env``;
    the job must fail."""
    result = launch(2, [*REFERENCE_TRAINING, "--data_path", str(corpus), "--save_dir", str(save_dir)],
                    script=FAULT_INJECTION_ENTRY, env={**env, **fault}, check=False)
    assert result.returncode != 0
    return result


def wait_for_logged_steps(launcher: subprocess.Popen, save_dir: Path, steps: int, timeout_s: float = 300) -> None:
    """Return once ``{save_dir}/metrics.jsonl`` holds ``steps`` records; fail if the job ends first."""
    deadline = time.time() + timeout_s
    while not (save_dir / "metrics.jsonl").is_file() or len(read_metrics(save_dir)) < steps:
        assert time.time() < deadline and launcher.poll() is None, f"training did not reach step {steps}"
        time.sleep(0.2)


def test_nonfinite_steps_are_skipped_on_both_ranks_and_too_many_in_a_row_stop_the_run(
        launch_dir, corpus, launch_env_vars):
    """bf16: step 3 is non-finite (skipped, training goes on), steps 6-8 too (3 in a row: stop)."""
    save_dir = launch_dir / "nonfinite"
    bf16 = DS_CONFIGS / "zero2_bf16.json"
    result = launch(2, [*short_training(bf16, max_steps=50), "--data_path", str(corpus), "--save_dir", str(save_dir),
                        "--save_interval", "1", "--keep_checkpoints", "20", "--max_nonfinite_steps", "3"],
                    script=FAULT_INJECTION_ENTRY, env={**launch_env_vars, "INJECT_NONFINITE_AT": "3,6-1000"},
                    check=False)
    assert result.returncode != 0
    stop_lines = [line for line in result.stderr.splitlines() if "in a row had non-finite gradients" in line]
    assert len(stop_lines) == 1 and stop_lines[0].startswith("pretrain_ds.py: stopped: 3 optimizer steps")
    metrics = read_metrics(save_dir)
    assert [m["skipped_steps"] for m in metrics] == [0, 0, 1, 1, 1, 2, 3, 4]
    assert torch.isfinite(torch.tensor([m["loss"] for m in metrics[3:5]])).all()
    weights = {n: module_weights(save_dir, f"step_{n}") for n in (2, 3, 4, 5, 8)}
    assert all(torch.equal(weights[2][k], weights[3][k]) for k in weights[2])  # step 3 skipped
    assert any(not torch.equal(weights[3][k], weights[4][k]) for k in weights[3])  # step 4 trained
    assert (save_dir / "checkpoints" / "latest").read_text() == "step_8"
    assert all(torch.equal(weights[5][k], weights[8][k]) for k in weights[5])  # the last good state
    # The .pth holds the fp32 master weights (rounded to fp16), as DeepSpeed's zero_to_fp32
    # reconstructs them, not the bf16 module copy.
    master, pth = assert_weights_file_holds_the_masters(save_dir)
    assert set(pth) == set(master) | {"lm_head.weight"}
    assert any(not torch.equal(pth[key], weights[8][key].half()) for key in master)


def test_a_job_killed_during_a_save_keeps_latest_on_the_previous_complete_checkpoint(
        launch_dir, corpus, launch_env_vars):
    """Rank 1 dies inside the step-20 save; resuming after a kill is the SIGKILL test's."""
    save_dir = launch_dir / "killed_in_save"
    launch_failing_reference_training(save_dir, corpus, launch_env_vars, {"KILL_DURING_SAVE": "1:2"})
    checkpoints = save_dir / "checkpoints"
    assert not (checkpoints / "step_20" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").exists()  # incomplete
    assert (checkpoints / "latest").read_text() == "step_10"
    assert_weights_file_holds_the_masters(save_dir, "step_10")  # nothing after step_10 overwrote the .pth


def test_a_full_disk_during_a_save_stops_in_one_line_with_the_previous_checkpoint_intact(
        launch_dir, corpus, launch_env_vars):
    save_dir = launch_dir / "disk_full"
    result = launch_failing_reference_training(save_dir, corpus, launch_env_vars, {"DISK_FULL_DURING_SAVE": "1:2"})
    checkpoints = save_dir / "checkpoints"
    reports = [line for line in result.stderr.splitlines() if "could not be written" in line]
    assert len(reports) == 1, result.stderr[-3000:]
    assert reports[0].startswith(f"pretrain_ds.py: stopped: rank 1: {checkpoints / 'step_20'} could not be written")
    assert f"{checkpoints / 'latest'} still names step_10" in reports[0]
    assert result.stderr.count("unexpected pos") == 1  # torch's own wording only inside that line
    assert "Traceback" not in result.stderr  # rank 0, which lost its peer, says so in one line too
    assert (checkpoints / "latest").read_text() == "step_10"
    assert_weights_file_holds_the_masters(save_dir, "step_10")  # nothing after step_10 overwrote the .pth


def test_a_killed_rank_ends_the_job_promptly_and_the_resume_loses_only_the_steps_since_the_checkpoint(
        launch_dir, corpus, launch_env_vars, reference_run):
    save_dir = launch_dir / "sigkill"
    args = [*REFERENCE_TRAINING, "--data_path", str(corpus), "--save_dir", str(save_dir)]
    with started_job(2, args, launch_env_vars, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as launcher:
        wait_for_logged_steps(launcher, save_dir, 12)
        victim = next(p for p in psutil.Process(launcher.pid).children(recursive=True)
                      if "--local_rank=1" in " ".join(p.cmdline()))
        killed_at = time.time()
        victim.kill()
        status = launcher.wait(timeout=120)
        elapsed = time.time() - killed_at
    print(f"job exited with status {status} {elapsed:.2f} s after rank 1 was killed")
    assert status != 0
    assert elapsed < 30
    last_logged = read_metrics(save_dir)[-1]["step"]
    assert last_logged < REFERENCE_STEPS, "the run finished before rank 1 was killed"
    checkpointed = int((save_dir / "checkpoints" / "latest").read_text().removeprefix("step_"))
    assert checkpointed % REFERENCE_SAVE_INTERVAL == 0 and 0 <= last_logged - checkpointed <= REFERENCE_SAVE_INTERVAL
    resumed = launch(2, [*args, "--from_resume", "1"], env=launch_env_vars)
    assert f"at step {checkpointed}" in resumed.stdout
    assert_resumed_losses_equal_the_reference(save_dir, reference_run, from_step=checkpointed)


def test_sigterm_saves_the_current_step_and_resumes_exactly(launch_dir, corpus, launch_env_vars, reference_run):
    save_dir = launch_dir / "sigterm"
    args = [*REFERENCE_TRAINING, "--data_path", str(corpus), "--save_dir", str(save_dir)]
    with started_job(2, args, launch_env_vars, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as launcher:
        wait_for_logged_steps(launcher, save_dir, 2)
        os.killpg(launcher.pid, signal.SIGTERM)  # what a scheduler does to a job before preemption
        output, _ = launcher.communicate(timeout=120)
    stopped_at = read_metrics(save_dir)[-1]["step"]
    assert stopped_at < REFERENCE_STEPS, "the run finished before the signal arrived"
    assert f"stopped by a signal after step {stopped_at}" in output
    assert "exits with return code" not in output  # every rank exited 0
    assert (save_dir / "checkpoints" / "latest").read_text() == f"step_{stopped_at}"
    launch(2, [*args, "--from_resume", "1"], env=launch_env_vars)
    assert_resumed_losses_equal_the_reference(save_dir, reference_run, from_step=stopped_at)


def test_a_token_cache_build_longer_than_the_collective_timeout_does_not_stop_the_job(launch_dir):
    """The two ranks tokenize a corpus's work units for several collective timeouts, each waiting on the
    other's unit and the assembly by lock files, not in a collective; the job then trains. (Waiting in a
    barrier, a rank's gloo timeout used to end the job; NCCL's watchdog would do the same.)"""
    timeout_s = 4
    folder = launch_dir / "long_tokenization"  # a token cache of its own: the build is what this test times
    folder.mkdir()
    corpus = write_corpus(folder / "part.jsonl", lines=100_000)
    big = folder / "big.jsonl"
    with big.open("wb") as out:
        for _ in range(5):  # ~110 MB: about 17 s of tokenization on this project's 2-core machine
            out.write(corpus.read_bytes())
    result = launch(2, [*short_training(FP32_CONFIG, max_steps=2), "--data_path", str(big), "--save_dir",
                        str(folder / "out"), "--collective_timeout", str(timeout_s)],
                    env={"MINIMIND_CACHE_DIR": str(folder / "cache")})
    # rank 0 says how many units it tokenized (the other rank the rest) and for how long
    (done,) = re.findall(r"token cache: (\d+) of (\d+) units tokenized by this process in ([\d.]+) s, the others by "
                         r"other processes", result.stdout)
    assert 0 < int(done[0]) < int(done[1]) and float(done[2]) > 2 * timeout_s, done
    assert len(read_metrics(folder / "out")) == 2
