"""MiniMind's ``.pth`` weights format: a plain state dict of half-precision tensors.

MiniMind's own tools save ``{key: tensor.half()}`` under the spec's keys (both
``model.embed_tokens.weight`` and the tied ``lm_head.weight``) and load it with strict
key matching; these two functions do the same, safely.
"""

import os
from pathlib import Path

import torch
from torch import nn

from minimind.errors import UserInputError


class WeightsMismatchError(UserInputError):
    """A weights file whose keys or shapes do not fit the model."""


def save_minimind_pth(model: nn.Module, path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write the model's state dict as MiniMind does (``dtype`` tensors), atomically."""
    return save_minimind_state(model.state_dict(), path, dtype)


def save_minimind_state(state: dict[str, torch.Tensor], path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write a state dict as MiniMind's ``.pth`` (``dtype`` tensors on CPU), atomically."""
    path = Path(path)
    state = {key: tensor.detach().to("cpu", dtype) for key, tensor in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        torch.save(state, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)  # a failed write (disk full) leaves no partial file behind
    return path


def load_minimind_pth(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a MiniMind ``.pth`` into ``model`` with strict keys and shapes; returns the model.

    The file is read with ``weights_only=True`` (no code runs). Tensors are cast to the
    model's parameter dtype. A mismatch raises ``WeightsMismatchError`` naming the file.
    """
    state = read_pth_state(path)
    check_state_fits(model, state, path)
    model.load_state_dict(state, strict=True)
    return model


def check_pth_fits(model: nn.Module, path: str | Path) -> None:
    """Raise ``WeightsMismatchError`` naming ``path`` unless it is a ``.pth`` that loads strictly into ``model``
    (which may sit on the meta device). The tensors are memory-mapped, not read: a check before heavy work."""
    check_state_fits(model, read_pth_state(path, mmap=True), path)


def read_pth_state(path: str | Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of a ``.pth`` file, read with ``weights_only=True`` (``mmap``: memory-mapped);
    ``WeightsMismatchError`` naming the file when it is missing or not a state dict of tensors."""
    path = Path(path)
    if not path.is_file():
        raise WeightsMismatchError(f"{path}: no such weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # unpickling refuses anything but tensors and containers
        raise WeightsMismatchError(f"{path}: not a tensor state dict ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict):
        raise WeightsMismatchError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def check_state_fits(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Raise ``WeightsMismatchError`` naming ``path`` unless ``state`` loads strictly into ``model``."""
    mismatch = state_dict_mismatch(model, state)
    if mismatch is not None:
        raise WeightsMismatchError(f"{path}: {mismatch}")


def state_dict_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """Why ``state`` cannot load strictly into ``model`` (missing/unexpected keys, a wrong shape), or None."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        return (
            f"keys do not match the model (missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            return f"{key} has shape {tuple(tensor.shape)}, the model expects {tuple(expected[key].shape)}"
    return None


def minimind_weights_name(save_weight: str, hidden_size: int, use_moe: bool) -> str:
    """MiniMind's weights file name, ``{save_weight}_{hidden}[_moe].pth`` (``pretrain_512.pth``)."""
    return f"{save_weight}_{hidden_size}{'_moe' if use_moe else ''}.pth"


WEIGHTS_GLOB = "*.pth"  # every name minimind_weights_name gives (DeepSpeed's own files end in .pt)
