"""How every benchmark starts its jobs and reads what a training run wrote.

- ``run_logged``: any command, from the repository root in its own session (stopping it stops
  everything it started), its output to a log, within a time limit; when it names a results
  file, it is also stopped once that file has been written for ``exit_grace_s`` without the
  command exiting (a rank stuck in gloo's teardown).
- ``launch``: a module under DeepSpeed's launcher, ``deepspeed --num_gpus R --master_port P
  --module M ARGS``, until it has written its results; its log is shown only when it fails.
  The benchmarks that measure inside launched ranks start each of their parts with it.
- ``train``: ``pretrain_ds.py`` itself under the launcher, into a fresh ``--save_dir``, until its
  final checkpoint is complete; returns its logged steps, read by the report's own reader
  (``minimind.report.read_metrics_file``, which the tests use too).
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from minimind.report import read_metrics_file
from minimind.training.api import free_local_port

REPO_ROOT = Path(__file__).resolve().parents[1]
POLL_S = 1.0  # how often a running command's results file and time limit are looked at


@dataclass(frozen=True)
class CommandExit:
    """How a command ended: its exit status (negative: the signal that ended it) and, when it was
    stopped, why."""

    status: int
    stopped: str | None = None


def run_logged(command: list[str], log_path: Path, timeout_s: float, env: dict | None = None,
               results: Path | None = None, exit_grace_s: float = 30) -> CommandExit:
    """Run ``command`` from the repository root with ``env`` added to this environment, output to
    ``log_path``; stop it, and everything it started, past ``timeout_s``, or ``exit_grace_s`` after
    ``results`` appeared if it has not exited by then."""
    started = time.monotonic()
    written_at = None
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, **(env or {})}, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        while True:
            try:
                return CommandExit(process.wait(timeout=POLL_S))
            except subprocess.TimeoutExpired:
                pass  # still running
            now = time.monotonic()
            if written_at is None and results is not None and results.is_file():
                written_at = now
            if now - started > timeout_s:
                stopped = f"timed out after {timeout_s:.0f} s"
            elif written_at is not None and now - written_at > exit_grace_s:
                stopped = f"did not exit {exit_grace_s:g} s after writing its results"
            else:
                continue
            os.killpg(process.pid, signal.SIGKILL)
            return CommandExit(process.wait(), stopped)


def launch(module: str, ranks: int, args: list[str], name: str, results: Path, timeout_s: float,
           exit_grace_s: float = 30, env: dict | None = None, log_path: Path | None = None) -> None:
    """``deepspeed --num_gpus ranks --module module args``, with ``env`` added to this environment, until
    ``results`` exists; output to ``log_path`` (default: beside ``results``). Exits (``SystemExit``),
    the log's end on stderr, when there are no results."""
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks),
               "--master_port", str(free_local_port()), "--module", module, *args]
    print(f"{name}: {' '.join(command[3:])}", flush=True)
    started = time.perf_counter()
    log_path = log_path or results.with_suffix(".log")
    finished = run_logged(command, log_path, timeout_s, env, results, exit_grace_s)
    if finished.stopped:
        print(f"{name}: launch {finished.stopped}; stopped it", flush=True)
    if not results.is_file():
        print(log_path.read_text()[-8000:], file=sys.stderr)
        raise SystemExit(f"{name}: no results (launcher exit status {finished.status})")
    print(f"{name}: done in {time.perf_counter() - started:.0f} s", flush=True)


def train(name: str, ranks: int, flags: list[str], save_dir: Path, log_path: Path, timeout_s: float,
          exit_grace_s: float = 60, env: dict | None = None) -> list[dict]:
    """``pretrain_ds.py flags`` on ``ranks`` ranks into a fresh ``save_dir`` until its final checkpoint
    is complete (``checkpoints/latest`` is written once every rank has finished it), as ``launch``
    runs a module; the logged steps of its ``metrics.jsonl``."""
    shutil.rmtree(save_dir, ignore_errors=True)
    latest = save_dir / "checkpoints" / "latest"
    launch("pretrain_ds", ranks, [*flags, "--save_dir", str(save_dir)], name, latest, timeout_s, exit_grace_s, env,
           log_path)
    return read_metrics_file(save_dir).training
