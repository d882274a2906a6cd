"""When the training loop saves: every ``--save_interval`` steps, and once more where it ends."""

from collections.abc import Callable

from minimind.training.position import TrainingPosition


class Checkpointer:
    """Owns the save policy; ``write(position)`` writes one checkpoint (DeepSpeed's and the ``.pth``).

    ``after_step`` saves on the interval; ``close`` saves where training ended (its last step,
    a stop by signal, or the last good state before too many non-finite steps) unless that
    step was just saved. A resumed run does not save again at the step it resumed from.
    """

    def __init__(self, write: Callable[[TrainingPosition], None], interval: int, saved_step: int):
        self.write = write
        self.interval = interval
        self.saved_step = saved_step

    def after_step(self, position: TrainingPosition) -> None:
        """Save when ``position.step`` is a multiple of the interval."""
        if position.step % self.interval == 0:
            self.save(position)

    def close(self, position: TrainingPosition) -> None:
        """Save the final ``position`` unless it is already saved."""
        if position.step != self.saved_step:
            self.save(position)

    def save(self, position: TrainingPosition) -> None:
        """Write a checkpoint of ``position`` now."""
        self.write(position)
        self.saved_step = position.step
