"""Reading DeepSpeed checkpoint files without running code from them.

DeepSpeed pickles its checkpoints and reads every file back with ``torch.load(...,
weights_only=False)``, which executes whatever the pickle names. A checkpoint from
elsewhere (a shared drive, a download) could carry code. Here every such load is made a
``weights_only=True`` load that also accepts the handful of classes DeepSpeed's own
checkpoints hold (loss scalers, the ZeRO stage enum, fragment addresses, NumPy's RNG
state arrays); anything else is refused with a one-line ``CheckpointError`` naming the
file and the classes. ``--trust_checkpoint`` (``checkpoint_loading(trusted=True)``)
restores DeepSpeed's behaviour, for checkpoints whose origin the user vouches for.

DeepSpeed has no setting for how it unpickles, so ``torch.load`` is swapped, but only inside
``checkpoint_loading`` blocks, which the project opens around its own checkpoint reads (a
resume, a checkpoint command) and nowhere else.
"""

import contextlib
import functools
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from minimind.checkpoint.errors import CheckpointError

DEEPSPEED_CHECKPOINT_GLOBALS = (
    LossScaler,
    DynamicLossScaler,
    ZeroStageEnum,
    fragment_address,
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),  # NumPy's legacy RNG state is a uint32 array
    np.empty(0).__reduce__()[0],  # the function NumPy's array pickles call, however NumPy names its module
)
_plain_torch_load = torch.load


_trust_checkpoints = False


def load_checkpoint_file(path: str | Path, **load_kwargs):
    """``torch.load`` one checkpoint file: weights-only plus DeepSpeed's classes, unless called
    inside ``checkpoint_loading(trusted=True)``.

    A refused class raises ``CheckpointError``: one line with the file and what it holds.
    """
    load_kwargs.pop("weights_only", None)
    if _trust_checkpoints:
        return _plain_torch_load(path, weights_only=False, **load_kwargs)
    try:
        with torch.serialization.safe_globals(list(DEEPSPEED_CHECKPOINT_GLOBALS)):
            return _plain_torch_load(path, weights_only=True, **load_kwargs)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused to unpickle {', '.join(_unsafe_globals(path)) or 'unknown objects'} "
            "(not part of a DeepSpeed checkpoint; pass --trust_checkpoint to run this file's pickle code "
            "only if you know where it came from)"
        ) from None


@contextlib.contextmanager
def checkpoint_loading(trusted: bool = False) -> Iterator[None]:
    """Within this block every ``torch.load`` of a file (DeepSpeed's included) goes through
    ``load_checkpoint_file``; ``trusted`` lifts the weights-only restriction for the block.
    ``torch.load`` is put back when the block ends, however it ends.
    """
    global _trust_checkpoints

    @functools.wraps(_plain_torch_load)
    def checked_load(f, map_location=None, pickle_module=None, **kwargs):
        if pickle_module is not None or not isinstance(f, (str, os.PathLike)):  # not a checkpoint file
            return _plain_torch_load(f, map_location, pickle_module, **kwargs)
        return load_checkpoint_file(f, map_location=map_location, **kwargs)

    torch.load, _trust_checkpoints = checked_load, trusted
    try:
        yield
    finally:
        torch.load, _trust_checkpoints = _plain_torch_load, False


def _unsafe_globals(path: str | Path) -> list[str]:
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in DEEPSPEED_CHECKPOINT_GLOBALS}
    try:
        return [name for name in torch.serialization.get_unsafe_globals_in_checkpoint(path) if name not in allowed]
    except Exception:  # not a zip checkpoint: the caller's generic wording stands
        return []
