"""Saving and resuming training state with DeepSpeed's sharded checkpoints.

``engine.save_checkpoint`` writes model, optimizer (sharded per rank), scheduler and the
client state; this module adds the position and every rank's RNG state to the client state the
run's parts contribute (``manager.CheckpointManager``), MiniMind's ``.pth`` and a manifest of every
file to each tag, moves ``latest`` and prunes old tags.
"""

import os
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from minimind.checkpoint.errors import CheckpointError
from minimind.checkpoint.locate import TAG_PREFIX, UNIVERSAL_FOLDER, latest_tag, step_tags
from minimind.checkpoint.manifest import MANIFEST_NAME, file_entry, tag_files, write_manifest
from minimind.training.checkpoints.recorded_writes import CheckpointWriteError, CheckpointWrites, failed_save_message
from minimind.training.distributed.collectives import all_gather_object, barrier
from minimind.training.distributed.world import global_rank, world_size
from minimind.training.position import TrainingPosition


def rng_state() -> dict:
    """This rank's Python, NumPy and torch RNG states, and its own GPU's generator.

    Only the current device's: a rank uses one GPU, and a resume where a rank sees fewer GPUs
    (Slurm's one GPU per task, another node shape) must not index a device that is not there.
    """
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def restore_rng_state(state: dict) -> None:
    """Put back what ``rng_state`` captured (the GPU generator onto this rank's current device)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"], torch.cuda.current_device())


def all_rng_states() -> list[dict]:
    """Every rank's RNG state, gathered to all ranks (saved in the client state)."""
    return all_gather_object(rng_state())


def save_training_state(
    engine, checkpoint_dir: Path, position: TrainingPosition, client_extra: dict, keep: int, writes: CheckpointWrites,
    write_weights: Callable[[Path], Path | None],
) -> tuple[str, Path | None]:
    """Write checkpoint ``step_{step}``: DeepSpeed's files with the client state, MiniMind's ``.pth``
    (``write_weights(tag_dir)``, collective, returns the file on rank 0), then the tag's manifest;
    then point ``latest`` at it and prune. Returns the tag and (on rank 0) the ``.pth``.

    Every rank records the files it wrote (``writes``) with their sizes and checksums; rank 0
    writes the manifest once every rank's record is in, adding the files it sees that nobody
    recorded (DeepSpeed's recovery scripts). ``latest`` moves only after the manifest,
    atomically, so a job killed during a save still resumes from the previous complete
    checkpoint, and old tags go only after that. A folder left at this step by an unfinished
    save is removed first. Collective.
    """
    tag = f"{TAG_PREFIX}{position.step}"
    tag_dir = checkpoint_dir / tag
    if global_rank() == 0:  # what an earlier save at this step left, and a universal copy made of it
        shutil.rmtree(tag_dir, ignore_errors=True)
        shutil.rmtree(checkpoint_dir / UNIVERSAL_FOLDER / tag, ignore_errors=True)
    barrier()
    client_state = {"position": asdict(position), "rng_states": all_rng_states(), **client_extra}
    writes.take()
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state=client_state, save_latest=False)
    weights = write_weights(tag_dir)
    mine = [*writes.take(), *([weights] if weights is not None else [])]
    gathered = all_gather_object([file_entry(path, tag_dir) for path in mine])
    if global_rank() == 0:
        entries = {entry.name: entry for rank_entries in gathered for entry in rank_entries}
        unrecorded = [path for path in tag_files(tag_dir) if path.relative_to(tag_dir).as_posix() not in entries]
        try:
            write_manifest(tag_dir, [*entries.values(), *(file_entry(path, tag_dir) for path in unrecorded)],
                           world_size())
            point_latest_at(checkpoint_dir, tag)
        except OSError as error:  # the manifest is the last write of a save: a full disk shows here too
            raise CheckpointWriteError(failed_save_message(checkpoint_dir, tag, error)) from error
        prune_checkpoints(checkpoint_dir, keep)
    barrier()
    return tag, weights


def publish_weights(weights: Path, destination: Path) -> Path:
    """Make ``destination`` (``{save_dir}/{save_weight}_*.pth``) a copy of the newest tag's ``.pth``,
    atomically. A copy, not a link: a tool that rewrites that file in place (MiniMind's scripts
    save to the same name) must not change the checkpoint's bytes under its manifest."""
    partial = destination.with_name(f"{destination.name}.partial")
    shutil.copyfile(weights, partial)
    os.replace(partial, destination)
    return destination


def point_latest_at(checkpoint_dir: Path, tag: str) -> None:
    """Atomically replace ``checkpoint_dir/latest`` with ``tag``."""
    partial = checkpoint_dir / "latest.partial"
    with partial.open("w") as handle:
        handle.write(tag)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, checkpoint_dir / "latest")


def prune_checkpoints(checkpoint_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete tags (those with a manifest), never the one
    ``latest`` names, with the universal copy a resume at another world size made of them; a
    tag left unfinished by a crash counts for nothing and is left alone (a later save at its
    step replaces it)."""
    latest = latest_tag(checkpoint_dir)
    complete = [tag_dir for tag_dir in step_tags(checkpoint_dir) if (tag_dir / MANIFEST_NAME).is_file()]
    for old in complete[keep:] if keep > 0 else []:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(checkpoint_dir / UNIVERSAL_FOLDER / old.name, ignore_errors=True)  # its universal copy


def load_training_state(engine, checkpoint_dir: Path, tag: str | None) -> dict:
    """Load engine, optimizer and scheduler state; return the client state as it was saved."""
    load_path, client_state = engine.load_checkpoint(str(checkpoint_dir), tag=tag)
    if load_path is None:
        raise CheckpointError(f"{checkpoint_dir}: no checkpoint could be loaded (tag {tag or 'latest'})")
    return client_state
