"""Running ``pretrain_ds.py`` (or a test entry point) through DeepSpeed's real launcher."""

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WORDS = (
    "the model reads tokens and predicts the next one while the optimizer updates weights after each "
    "step of gradient descent with a learning rate that follows a cosine from its peak down to a tenth"
).split()


def write_corpus(path: Path, lines: int = 600, seed: int = 0) -> Path:
    """A small JSON Lines corpus of seeded word sequences (a learnable distribution)."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(lines):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60)))
            handle.write(json.dumps({"text": text}) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(ranks: int, args: list[str], script: str = "pretrain_ds.py") -> list[str]:
    """The ``deepspeed --num_gpus ranks script args`` command line, on a free port."""
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks),
            "--master_port", str(free_port()), script, *args]


def remove_shared_memory_buffers(command: list[str]) -> None:
    """Delete the ``/dev/shm`` all-reduce buffers DeepSpeed's CPU backend left for this launch's port.

    DeepSpeed never unlinks them (69 MB per rank); dozens of launches would fill ``/dev/shm``.
    """
    port = command[command.index("--master_port") + 1]
    for buffer in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
        buffer.unlink(missing_ok=True)


def launch_env(env: dict | None = None) -> dict:
    """The environment launched runs get: this one, the repository importable, plus ``env``."""
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}


def launch(ranks: int, args: list[str], script: str = "pretrain_ds.py", env: dict | None = None,
           timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``launch_command`` from the repository root, output captured; fails the test on a
    non-zero exit unless ``check`` is False."""
    command = launch_command(ranks, args, script)
    try:
        result = subprocess.run(command, cwd=REPO_ROOT, env=launch_env(env), capture_output=True, text=True,
                                timeout=timeout)
    finally:
        remove_shared_memory_buffers(command)
    if check and result.returncode != 0:
        raise AssertionError(f"launch failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def read_metrics(save_dir: Path) -> list[dict]:
    """The records of ``{save_dir}/metrics.jsonl``."""
    return [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
