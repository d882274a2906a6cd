"""Rank-aware printing: one place decides who speaks."""

from minimind.training.distributed.world import global_rank


def print0(*parts) -> None:
    """Print on global rank 0 only, flushed so launcher logs stay in order."""
    if global_rank() == 0:
        print(*parts, flush=True)
