"""Every checkpoint of a run, in one class: when to save, what a tag holds, and loading a tag back.

A tag (``checkpoints/step_N``) holds DeepSpeed's files (model, optimizer shards, scheduler), the
client state, MiniMind's ``.pth`` and a manifest of every file (``tags.save_training_state``). The
client state is the format version, the training position, every rank's RNG state, and what the run's
parts contribute through ``CheckpointPart``: the run's record (resolved config, flags, model, tokenizer
and data identity), its schedule, the logger's wandb id. After each save the ``.pth`` is published to
``{save_dir}/{name}.pth`` and old tags are pruned. ``load`` reads a tag back in the current client-state
layout (``client_state.upgrade_client_state``) and restores this rank's RNG.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from minimind.checkpoint.locate import CheckpointLocation
from minimind.training.checkpoints.client_state import FORMAT_KEY, FORMAT_VERSION, upgrade_client_state
from minimind.training.checkpoints.recorded_writes import CheckpointWrites
from minimind.training.checkpoints.tags import (
    load_training_state,
    publish_weights,
    restore_rng_state,
    save_training_state,
)
from minimind.training.distributed.rank_print import print0
from minimind.training.distributed.world import global_rank, world_size
from minimind.training.position import TrainingPosition


class CheckpointPart(Protocol):
    """A part of the run whose state every checkpoint records, under client-state keys of its own."""

    def checkpoint_state(self) -> dict:
        """The client-state entries this part contributes (picklable, read back by a resume)."""


class CheckpointManager:
    """Saves every ``interval`` steps and once more where training ends (its last step, a stop by signal, or
    the last good state before too many non-finite steps) unless that step was just saved; a resumed run
    does not save again at the step it resumed from. Keeps the ``keep`` newest tags.

    ``write_weights(tag_dir)`` writes MiniMind's ``.pth`` into a tag (collective; returns the file on rank 0),
    which each save then publishes as ``weights_path``.
    """

    def __init__(self, engine, save_dir: Path, weights_path: Path, interval: int, keep: int,
                 write_weights: Callable[[Path], Path | None]):
        self.engine = engine
        self.checkpoint_dir = save_dir / "checkpoints"
        self.weights_path = weights_path
        self.interval = interval
        self.keep = keep
        self.write_weights = write_weights
        self.parts: list[CheckpointPart] = []
        self.saved_step = 0
        self.writes: CheckpointWrites | None = None  # wraps the engine's writer at the first save

    def contribute(self, *parts: CheckpointPart) -> None:
        """Record ``parts``' state in every checkpoint from now on."""
        self.parts.extend(parts)

    def after_step(self, position: TrainingPosition) -> None:
        """Save when ``position.step`` is a multiple of the interval."""
        if position.step % self.interval == 0:
            self.save(position)

    def close(self, position: TrainingPosition) -> None:
        """Save the final ``position`` unless it is already saved."""
        if position.step != self.saved_step:
            self.save(position)

    def save(self, position: TrainingPosition) -> None:
        """Write a checkpoint of ``position`` now. Collective."""
        self.write(position)
        self.saved_step = position.step

    def write(self, position: TrainingPosition) -> None:
        """Tag ``step_{step}`` with the parts' client state and the ``.pth``, then the ``.pth`` published as
        ``weights_path``. Collective."""
        if self.writes is None:
            self.writes = CheckpointWrites(self.engine)
        client_extra = {FORMAT_KEY: FORMAT_VERSION}
        for part in self.parts:
            client_extra.update(part.checkpoint_state())
        tag, weights = save_training_state(self.engine, self.checkpoint_dir, position, client_extra, self.keep,
                                           self.writes, self.write_weights)
        if weights is not None:
            publish_weights(weights, self.weights_path)
        print0(f"step {position.step}: checkpoint {self.checkpoint_dir / tag}, weights {self.weights_path}")

    def load(self, location: CheckpointLocation) -> dict:
        """Load ``location`` into the engine (model, optimizer, scheduler), restore this rank's RNG state, and
        return the client state in the current layout; the run then counts that step as saved."""
        client_state = upgrade_client_state(load_training_state(self.engine, location.root, location.tag))
        states = client_state["rng_states"]
        if len(states) == world_size():
            restore_rng_state(states[global_rank()])
        self.saved_step = client_state["position"].get("step", 0)
        return client_state
