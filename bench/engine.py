"""The DeepSpeed engine a benchmark trains: a config from ``resolve_ds_config``, then ``deepspeed.initialize``."""

from pathlib import Path

import deepspeed
import torch
from deepspeed import DeepSpeedEngine
from deepspeed.accelerator import get_accelerator

from minimind.model import MiniMindForCausalLM
from minimind.training.api import BatchPlan, install_aux_loss, resolve_ds_config, resolve_expert_parallel


def build_engine(config_path: Path, data_parallel: int, model: MiniMindForCausalLM, micro_batch: int,
                 accumulation: int, zero_stage: int | None = None,
                 ep_size: int | None = None) -> tuple[DeepSpeedEngine, dict, BatchPlan]:
    """``model`` in an engine configured by the DeepSpeed JSON ``config_path`` for ``data_parallel`` ranks,
    ``micro_batch`` rows per rank and ``accumulation`` micro-steps; returns the engine, the config it
    got and the batch plan.

    ``zero_stage`` overrides the config's ZeRO stage; ``ep_size`` is the AutoEP size, as
    ``--ep_size`` gives it to the trainer (None: the config's ``expert_parallel`` section decides).
    With AutoEP, MiniMind's aux loss is hooked onto the engine's model.
    """
    ds_config, batch = resolve_ds_config(config_path, data_parallel=data_parallel,
                                         fp16_supported=get_accelerator().is_fp16_supported(),
                                         micro_batch=micro_batch, accumulation=accumulation)
    if zero_stage is not None:
        ds_config.setdefault("zero_optimization", {})["stage"] = zero_stage
    expert_parallel = resolve_expert_parallel(ds_config, ep_size, model.config, data_parallel, str(config_path))
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    if expert_parallel is not None:
        install_aux_loss(engine, model.config)
    return engine, ds_config, batch


def plain_adamw(model: torch.nn.Module, ds_config: dict) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``model`` with the DeepSpeed config's lr, betas, eps and weight decay:
    the optimizer a plain PyTorch loop compared with the engine takes. Refuses a non-AdamW config."""
    if ds_config["optimizer"]["type"].lower() != "adamw":
        raise ValueError(f"the plain loop runs AdamW, the config asks for {ds_config['optimizer']['type']}")
    params = ds_config["optimizer"]["params"]
    return torch.optim.AdamW(model.parameters(), lr=params["lr"], betas=tuple(params["betas"]), eps=params["eps"],
                             weight_decay=params["weight_decay"])
