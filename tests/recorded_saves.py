"""The checkpoint manager's save policy on its own: each save recorded as its step instead of written."""

from pathlib import Path

from minimind.training.checkpoints.manager import CheckpointManager
from minimind.training.position import TrainingPosition


class RecordedSaves(CheckpointManager):
    """``CheckpointManager`` whose ``write`` appends the step to ``steps`` (no engine, nothing on disk)."""

    def __init__(self, interval: int, saved_step: int = 0):
        super().__init__(engine=None, save_dir=Path("unwritten"), weights_path=Path("unwritten.pth"), interval=interval,
                         keep=1, write_weights=lambda tag_dir: None)
        self.saved_step = saved_step
        self.steps: list[int] = []

    def write(self, position: TrainingPosition) -> None:
        self.steps.append(position.step)
