"""A save folder belongs to one run: a run holding it locks out a second one, a killed holder's
lock is taken over, and a fresh run never lands on an earlier run's checkpoints by accident."""

import subprocess
import sys

import torch.distributed as dist

import pretrain_ds
from tests.launcher import FP32_CONFIG, main_in_process, short_training, write_corpus

# Holds an exclusive flock on argv[1] as a running job's rank 0 does, says so, then waits to be killed.
HOLD_LOCK = ("import fcntl, os, sys, time\n"
             "handle = open(sys.argv[1], 'a+')\n"
             "fcntl.flock(handle, fcntl.LOCK_EX)\n"
             "handle.write(f'pid {os.getpid()} on the test host\\n')\n"
             "handle.flush()\n"
             "print('locked', flush=True)\n"
             "time.sleep(600)\n")


def test_a_fresh_run_over_checkpoints_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "checkpoints" / "step_4").mkdir(parents=True)
    status = pretrain_ds.main(["--save_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err == (f"pretrain_ds.py: error: --save_dir {tmp_path} holds an earlier run's checkpoints "
                                   f"({tmp_path / 'checkpoints'}); resume it with --from_resume 1, choose another "
                                   "--save_dir, or pass --overwrite to start over")
    assert pretrain_ds.main(["--save_dir", str(tmp_path), "--overwrite", "--from_resume", "1"]) == 2
    assert "cannot be combined with --from_resume" in capsys.readouterr().err
    assert not dist.is_initialized() and (tmp_path / "checkpoints" / "step_4").is_dir()


def test_a_save_dir_in_use_is_refused_and_a_killed_holder_s_lock_taken_over(tmp_path):
    """Runs of one process (no launcher) in this one: the lock is the save folder's, not the launcher's."""
    corpus = write_corpus(tmp_path / "corpus.jsonl", lines=50)
    env = {"MINIMIND_CACHE_DIR": str(tmp_path / "cache")}
    save_dir = tmp_path / "run"
    earlier = save_dir / "checkpoints" / "step_5"
    earlier.mkdir(parents=True)
    (earlier / "weights").write_text("the earlier run's")
    (save_dir / "checkpoints" / "latest").write_text("step_5")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(save_dir / ".run.lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = [*short_training(FP32_CONFIG, max_steps=2), "--data_path", str(corpus), "--save_dir", str(save_dir),
                "--overwrite"]
        refused = main_in_process(args, env=env, check=False)
        assert refused.returncode == 2
        assert (f"pretrain_ds.py: error: --save_dir {save_dir} is in use by another run (pid {holder.pid} on the "
                "test host); wait for it to end or choose another --save_dir") in refused.stderr
        assert (earlier / "weights").read_text() == "the earlier run's"  # a refused run loses nothing
    finally:
        holder.kill()
        holder.wait()
    result = main_in_process(args, env=env)
    assert f"the lock of an earlier run (pid {holder.pid} on the test host) was left by a job" in result.stdout
    assert not earlier.exists() and (save_dir / "checkpoints" / "latest").read_text() == "step_2"
    assert (save_dir / ".run.lock").read_text() == ""  # released at the end of the run
