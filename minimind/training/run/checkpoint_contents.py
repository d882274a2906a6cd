"""What a run's checkpoints hold beside the position and RNG: its record and its schedule, and the manager
that saves and loads them with MiniMind's ``.pth`` (one file, or gathered from the expert-parallel ranks)."""

from dataclasses import dataclass
from pathlib import Path

from minimind.training.checkpoints.manager import CheckpointManager
from minimind.training.checkpoints.pth import write_minimind_weights
from minimind.training.config import RunConfig
from minimind.training.parallel.autoep import write_expert_parallel_weights
from minimind.training.run.inputs import RunInputs


@dataclass(frozen=True)
class RunRecord:
    """The run as a resume and the export read it back: the resolved DeepSpeed config, every resolved flag,
    and the identity a resumed checkpoint must share (model, tokenizer, data). Built once (``of``): the
    tokenizer's fingerprint serialises the whole tokenizer, which no save should repeat."""

    state: dict

    @classmethod
    def of(cls, config: RunConfig, inputs: RunInputs) -> "RunRecord":
        """The record of the run ``config`` and ``inputs`` describe."""
        return cls({"resolved_ds_config": inputs.ds_config, "args": dict(config.flags),
                    **inputs.identity().client_state()})

    def checkpoint_state(self) -> dict:
        """``resolved_ds_config``, ``args`` and the run identity's entries."""
        return self.state


@dataclass(frozen=True)
class ScheduleRecord:
    """The learning-rate schedule's length and warm-up: a resume says when the new run's differs."""

    total_steps: int
    warmup_steps: int

    def checkpoint_state(self) -> dict:
        """``schedule``."""
        return {"schedule": {"total_steps": self.total_steps, "warmup_steps": self.warmup_steps}}


def checkpoint_manager(config: RunConfig, inputs: RunInputs, engine) -> CheckpointManager:
    """The run's checkpoint manager: ``--save_interval``, ``--keep_checkpoints``, ``{save_dir}/checkpoints``, and
    MiniMind's ``.pth`` written from the engine (gathered from every rank's experts under AutoEP)."""

    def write_weights(tag_dir: Path) -> Path | None:
        if inputs.ep_size is None:
            return write_minimind_weights(engine, tag_dir / config.weights_path().name)
        return write_expert_parallel_weights(engine, tag_dir / config.weights_path().name)

    return CheckpointManager(engine, inputs.save_dir, config.weights_path(), config.checkpoint.save_interval,
                             config.checkpoint.keep_checkpoints, write_weights)
