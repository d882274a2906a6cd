"""MiniMind's ``.pth`` from a DeepSpeed engine: the fp32 master weights, gathered to rank 0."""

from collections.abc import Callable
from pathlib import Path

import torch
from deepspeed.utils import safe_get_full_fp32_param

from minimind.model.pth_weights import save_minimind_state
from minimind.training.checkpoints.recorded_writes import CheckpointWriteError, failed_write_message
from minimind.training.distributed.world import global_rank


def write_minimind_weights(engine, path: Path) -> Path | None:
    """Rank 0 writes MiniMind's ``.pth`` of ``engine``'s model to ``path`` (half precision, MiniMind
    keys) and returns it; the other ranks return None.

    The weights come from the optimizer's fp32 master copy, not the bf16/fp16 module, so
    updates smaller than the module dtype's rounding are kept. Collective: call on every rank.
    """
    state = master_weights_state_dict(engine)
    if state is None:
        return None
    return save_weights_file(state, path)


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
