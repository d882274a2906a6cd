"""The weights a run starts from: ``--from_weight``'s ``.pth`` (MiniMind's ``init_model``), checked before any
heavy work and loaded into the model before DeepSpeed wraps it."""

import torch

from minimind.errors import ConfigError
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.model.pth_weights import WeightsMismatchError, check_pth_fits, load_minimind_pth
from minimind.training.config import RunConfig
from minimind.training.distributed.rank_print import print0
from minimind.training.run.inputs import RunInputs


def check_from_weight(config: RunConfig, model_config: MiniMindConfig) -> None:
    """Raise ``ConfigError`` naming ``--from_weight`` when its ``.pth`` is missing or does not fit the model (its
    tensors memory-mapped, the model on the meta device: nothing heavy is read or built)."""
    path = config.from_weight_path()
    if path is None:
        return
    with torch.device("meta"):
        model = MiniMindForCausalLM(model_config)
    try:
        check_pth_fits(model, path)
    except WeightsMismatchError as error:
        raise ConfigError(f"--from_weight {config.checkpoint.from_weight}: {error} (MiniMind's stages read "
                          "{save_dir}/{from_weight}_{hidden}[_moe].pth of the same model size)") from None


def start_weights(model: MiniMindForCausalLM, config: RunConfig, inputs: RunInputs) -> None:
    """Load ``--from_weight``'s ``.pth`` into ``model`` (as MiniMind's ``init_model`` does; the optimizer and the
    schedule start fresh), unless the run resumes from a checkpoint, which holds its own weights."""
    path = config.from_weight_path()
    if path is None:
        return
    if inputs.resume is not None:
        print0(f"--from_weight {config.checkpoint.from_weight}: not used, the run resumes from its checkpoint")
        return
    load_minimind_pth(model, path)
    print0(f"weights: {path} (--from_weight {config.checkpoint.from_weight}); fresh optimizer and schedule")
