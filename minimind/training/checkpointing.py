"""Saving and resuming training state with DeepSpeed's sharded checkpoints.

``engine.save_checkpoint`` writes model, optimizer (sharded per rank), scheduler and the
client state; this module decides what goes in the client state (position, RNG of every
rank, resolved config, tokenizer identity, wandb id), prunes old tags and writes MiniMind's
``.pth`` weights beside them.
"""

import os
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from deepspeed.utils import safe_get_full_fp32_param

from minimind.checkpoint.errors import CheckpointError
from minimind.errors import first_line
from minimind.model.pth_weights import minimind_weights_name, save_minimind_state
from minimind.training.collectives import all_gather_object, barrier
from minimind.training.world import global_rank, world_size

TAG_PREFIX = "step_"


class CheckpointWriteError(RuntimeError):
    """A checkpoint save that failed on this rank (disk full, I/O error); one line, names what is intact."""


@dataclass
class TrainingPosition:
    """Where training stands: the optimizer step done and the next sample of the epoch."""

    epoch: int = 0
    step: int = 0
    sample_in_epoch: int = 0

    def advance(self, global_batch: int) -> None:
        """One optimizer step over ``global_batch`` samples is done."""
        self.step += 1
        self.sample_in_epoch += global_batch

    def begin_epoch(self, epoch: int) -> None:
        """Move to the start of ``epoch`` (unless already in it: a resume mid-epoch keeps its place)."""
        if epoch != self.epoch:
            self.epoch, self.sample_in_epoch = epoch, 0

    @classmethod
    def from_client_state(cls, saved: dict) -> "TrainingPosition":
        """The position a checkpoint's client state recorded (keys of earlier formats ignored)."""
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


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
    """Put back what ``rng_state`` captured (the GPU generator onto this rank's current device).

    Checkpoints written before this format hold every visible GPU's generator (a list): the
    entry of the current device is taken when there is one.
    """
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    current = torch.cuda.current_device()
    if isinstance(cuda, list):
        if current >= len(cuda):
            return
        cuda = cuda[current]
    torch.cuda.set_rng_state(cuda, current)


def all_rng_states() -> list[dict]:
    """Every rank's RNG state, gathered to all ranks (saved in the client state)."""
    return all_gather_object(rng_state())


def save_training_state(engine, checkpoint_dir: Path, position: TrainingPosition, client_extra: dict,
                        keep: int) -> str:
    """Write checkpoint ``step_{step}`` with the client state, then point ``latest`` at it and prune.

    DeepSpeed's own ``latest`` is written by rank 0 before the other ranks have finished
    their files; here it is written only after ``save_checkpoint``'s closing barrier (every
    rank done), atomically (temporary file renamed over it), so a job killed during a save
    still resumes from the previous complete checkpoint. Old tags go only after that.
    """
    tag = f"{TAG_PREFIX}{position.step}"
    client_state = {"position": asdict(position), "rng_states": all_rng_states(), **client_extra}
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state=client_state, save_latest=False)
    if global_rank() == 0:
        point_latest_at(checkpoint_dir, tag)
        prune_checkpoints(checkpoint_dir, keep)
    barrier()
    return tag


def report_failed_checkpoint_writes(engine) -> None:
    """Make a file write of ``engine``'s checkpoints that fails (disk full, I/O error) raise
    ``CheckpointWriteError`` with ``failed_save_message``.

    DeepSpeed's checkpoint engine lets ``torch.save``'s own error through, which for a full
    disk reads "unexpected pos 64 vs 0"; its ``save`` method is wrapped on this one engine.
    """
    plain_save = engine.checkpoint_engine.save

    def save_reporting_failure(state_dict, path):
        try:
            return plain_save(state_dict, path)
        except (OSError, RuntimeError) as error:  # torch.save reports a full disk as either
            tag_dir = Path(path).parent
            raise CheckpointWriteError(failed_save_message(tag_dir.parent, tag_dir.name, error)) from error

    engine.checkpoint_engine.save = save_reporting_failure


def failed_save_message(checkpoint_dir: Path, tag: str, error: BaseException) -> str:
    """One line: which save failed where and why, the free space left, and which checkpoint is intact."""
    latest_file = checkpoint_dir / "latest"
    latest = latest_file.read_text().strip() if latest_file.is_file() else None
    intact = (f"{latest_file} still names {latest}, which is complete (resume with --from_resume 1)" if latest
              else "no earlier checkpoint exists")
    return failed_write_message(checkpoint_dir / tag, error, f"{intact}; the partial {tag} can be deleted")


def failed_write_message(target: Path, error: BaseException, intact: str) -> str:
    """One line: ``target`` could not be written on this rank, why, the free space on its disk, and ``intact``."""
    existing = next((p for p in (target, *target.parents) if p.exists()), Path("/"))
    reason = first_line(error)
    free = shutil.disk_usage(existing).free
    return (f"rank {global_rank()}: {target} could not be written ({reason}; {free / 2**30:.2f} GiB free there); "
            f"{intact}")


def point_latest_at(checkpoint_dir: Path, tag: str) -> None:
    """Atomically replace ``checkpoint_dir/latest`` with ``tag``."""
    partial = checkpoint_dir / "latest.partial"
    with partial.open("w") as handle:
        handle.write(tag)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, checkpoint_dir / "latest")


def prune_checkpoints(checkpoint_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest ``step_*`` tags (never the one ``latest`` names)."""
    latest_file = checkpoint_dir / "latest"
    latest = latest_file.read_text().strip() if latest_file.is_file() else None
    tags = sorted(
        (p for p in checkpoint_dir.glob(f"{TAG_PREFIX}*") if p.is_dir() and p.name[len(TAG_PREFIX):].isdigit()),
        key=lambda p: int(p.name[len(TAG_PREFIX):]),
    )
    for old in tags[:-keep] if keep > 0 else []:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)


def load_training_state(engine, checkpoint_dir: Path, tag: str | None) -> dict:
    """Load engine, optimizer and scheduler state; restore this rank's RNG; return the client state."""
    load_path, client_state = engine.load_checkpoint(str(checkpoint_dir), tag=tag)
    if load_path is None:
        raise CheckpointError(f"{checkpoint_dir}: no checkpoint could be loaded (tag {tag or 'latest'})")
    states = client_state["rng_states"]
    if len(states) == world_size():
        restore_rng_state(states[global_rank()])
    return client_state


def write_minimind_weights(engine, save_dir: Path, hidden_size: int, use_moe: bool) -> Path | None:
    """Rank 0 writes ``{save_dir}/pretrain_{hidden}[_moe].pth`` (half precision, MiniMind keys).

    The weights come from the optimizer's fp32 master copy, not the bf16/fp16 module, so
    updates smaller than the module dtype's rounding are kept. Collective: call on every rank.
    """
    state = master_weights_state_dict(engine)
    if state is None:
        return None
    return save_weights_file(state, save_dir / minimind_weights_name(hidden_size, use_moe))


def save_weights_file(state: dict[str, torch.Tensor], path: Path) -> Path:
    """``save_minimind_state`` (atomic), with a failed write raised as one-line ``CheckpointWriteError``."""
    try:
        return save_minimind_state(state, path)
    except (OSError, RuntimeError) as error:
        intact = f"the previous {path.name} is unchanged"
        raise CheckpointWriteError(failed_write_message(path, error, intact)) from error


def master_weights_state_dict(
    engine, gather: Callable[[str, torch.Tensor], torch.Tensor] | None = None
) -> dict[str, torch.Tensor] | None:
    """On global rank 0, the module's state dict with every parameter replaced by its full fp32
    master value, on the host; None on the other ranks.

    Uses DeepSpeed's ``safe_get_full_fp32_param`` (gathers across ranks under ZeRO 1-3, on the
    accelerator); ``gather(name, tensor)``, when given, completes a tensor further (AutoEP's
    experts). Every rank takes part in each gather, but only rank 0 keeps the result: the
    others drop each tensor at once, so no rank but one ever holds the whole model on its host.
    Tied keys (``lm_head.weight``) take their source parameter's value. Collective.
    """
    keep = global_rank() == 0
    names_by_id = {}
    state = {}
    for name, param in engine.module.named_parameters():
        full = safe_get_full_fp32_param(param)
        full = full if full is not None else param.detach()
        if gather is not None:
            full = gather(name, full)
        if keep:
            state[name] = full.float().cpu()
        names_by_id[id(param)] = name
    if not keep:
        return None
    for key, value in engine.module.state_dict(keep_vars=True).items():
        if key not in state:
            state[key] = state[names_by_id[id(value)]] if id(value) in names_by_id else value.detach().float().cpu()
    return state

