"""Rank-aware printing: one place decides who speaks."""

import os


def global_rank() -> int:
    """This process's rank as the launcher set it (0 when not launched by one)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes in the job as the launcher set it (1 when not launched by one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def print0(*parts) -> None:
    """Print on global rank 0 only, flushed so launcher logs stay in order."""
    if global_rank() == 0:
        print(*parts, flush=True)
