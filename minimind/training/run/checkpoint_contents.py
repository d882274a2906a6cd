"""The checkpointer's ``write(position)`` for a run: what goes in a tag, and the ``.pth`` it publishes."""

from collections.abc import Callable
from pathlib import Path

from minimind.training.checkpoints.pth import write_minimind_weights
from minimind.training.checkpoints.recorded_writes import CheckpointWrites
from minimind.training.checkpoints.tags import publish_weights, save_training_state
from minimind.training.config import RunConfig
from minimind.training.distributed.rank_print import print0
from minimind.training.parallel.autoep import write_expert_parallel_weights
from minimind.training.position import TrainingPosition
from minimind.training.run.inputs import RunInputs


def checkpoint_writer(config: RunConfig, inputs: RunInputs, engine, wandb_run_id: str | None,
                      total_steps: int) -> Callable[[TrainingPosition], None]:
    """The checkpointer's ``write(position)``: a DeepSpeed checkpoint with the client state and
    MiniMind's ``.pth`` in the tag, the tag's manifest, then the ``.pth`` published to ``--save_dir``."""
    checkpoint_dir = inputs.save_dir / "checkpoints"
    client_extra = {
        "resolved_ds_config": inputs.ds_config,
        "args": dict(config.flags),
        "wandb_run_id": wandb_run_id,
        "schedule": {"total_steps": total_steps, "warmup_steps": config.schedule.warmup_steps},
        **inputs.identity().client_state(),
    }
    writes = CheckpointWrites(engine)
    name = config.model.weights_name()

    def write_weights(tag_dir: Path) -> Path | None:
        if inputs.ep_size is None:
            return write_minimind_weights(engine, tag_dir / name)
        return write_expert_parallel_weights(engine, tag_dir / name)

    def write(at: TrainingPosition) -> None:
        tag, weights = save_training_state(engine, checkpoint_dir, at, client_extra, config.checkpoint.keep_checkpoints,
                                           writes,
                                           write_weights)
        if weights is not None:
            publish_weights(weights, inputs.save_dir / name)
        print0(f"step {at.step}: checkpoint {checkpoint_dir / tag}, weights {inputs.save_dir / name}")

    return write
