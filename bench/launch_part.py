"""Running one part of a benchmark under DeepSpeed's launcher until it has written its results.

The benchmarks measure inside launched ranks (``deepspeed --num_gpus R --module bench.X
--part ...``); the driver starts each part, shows its log only if it fails, and stops a launch
still running ``exit_grace_s`` after the results are written (a rank stuck in gloo's teardown)
or one running past ``timeout_s``.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from minimind.training.distributed.process_group import free_local_port

REPO_ROOT = Path(__file__).resolve().parents[1]


def launch_part(module: str, ranks: int, part_args: list[str], name: str, out: Path, timeout_s: float,
                exit_grace_s: float = 30, env: dict | None = None) -> None:
    """``deepspeed --num_gpus ranks --module module part_args``, with ``env`` added to this environment,
    until ``out`` exists; exits on failure."""
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks),
               "--master_port", str(free_local_port()), "--module", module, *part_args]
    print(f"{name}: {' '.join(command[3:])}", flush=True)
    started = time.perf_counter()
    log_path = out.with_suffix(".log")
    with open(log_path, "w") as log:
        # Its own session, so that the launcher and its ranks can be stopped together.
        launcher = subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, **(env or {})}, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        written_at = None
        while launcher.poll() is None:
            time.sleep(1)
            now = time.perf_counter()
            if written_at is None and out.is_file():
                written_at = now
            if (written_at is not None and now - written_at > exit_grace_s) or now - started > timeout_s:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait()
                reason = f"did not exit {exit_grace_s:g} s after writing its results" if written_at else "timed out"
                print(f"{name}: launch {reason}; stopped it", flush=True)
    if not out.is_file():
        print(log_path.read_text()[-8000:], file=sys.stderr)
        raise SystemExit(f"{name}: no results (launcher exit status {launcher.returncode})")
    print(f"{name}: done in {time.perf_counter() - started:.0f} s", flush=True)
