"""Checkpoint files as they are written: which files this rank wrote, and a failed write as one line.

DeepSpeed writes every checkpoint file through ``engine.checkpoint_engine.save``; wrapping that
one method on the engine records each path (for the tag's manifest) and turns ``torch.save``'s
own error for a full disk ("unexpected pos 64 vs 0") into a ``CheckpointWriteError`` that says
what failed, the free space, and which checkpoint is intact.
"""

import shutil
from pathlib import Path

from minimind.checkpoint.locate import latest_tag
from minimind.errors import first_line
from minimind.training.distributed.world import global_rank


class CheckpointWriteError(RuntimeError):
    """A checkpoint save that failed on this rank (disk full, I/O error); one line, names what is intact."""


class CheckpointWrites:
    """Records the files ``engine``'s checkpoint engine writes on this rank, and reports a failed write."""

    def __init__(self, engine):
        self.paths: list[Path] = []
        plain_save = engine.checkpoint_engine.save

        def save_recorded(state_dict, path):
            try:
                plain_save(state_dict, path)
            except (OSError, RuntimeError) as error:  # torch.save reports a full disk as either
                tag_dir = Path(path).parent
                raise CheckpointWriteError(failed_save_message(tag_dir.parent, tag_dir.name, error)) from error
            self.paths.append(Path(path))

        engine.checkpoint_engine.save = save_recorded

    def take(self) -> list[Path]:
        """The files written since the last call (this rank's share of one save)."""
        paths, self.paths = self.paths, []
        return paths


def failed_save_message(checkpoint_dir: Path, tag: str, error: BaseException) -> str:
    """One line: which save failed where and why, the free space left, and which checkpoint is intact."""
    latest = latest_tag(checkpoint_dir)
    intact = (f"{checkpoint_dir / 'latest'} still names {latest}, which is complete (resume with --from_resume 1)"
              if latest else "no earlier checkpoint exists")
    return failed_write_message(checkpoint_dir / tag, error, f"{intact}; the partial {tag} can be deleted")


def failed_write_message(target: Path, error: BaseException, intact: str) -> str:
    """One line: ``target`` could not be written on this rank, why, the free space on its disk, and ``intact``."""
    existing = next((p for p in (target, *target.parents) if p.exists()), Path("/"))
    reason = first_line(error)
    free = shutil.disk_usage(existing).free
    return (f"rank {global_rank()}: {target} could not be written ({reason}; {free / 2**30:.2f} GiB free there); "
            f"{intact}")
