"""The model (from scratch or ``--from_weight``) and DeepSpeed's engine around it: the schedule, compilation,
AutoEP's auxiliary loss."""

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator

from minimind.model import MiniMindForCausalLM
from minimind.model.precision import PRECISION_BYTES, PRECISION_DTYPES, precision_of
from minimind.training.config import RunConfig
from minimind.training.distributed.rank_print import print0
from minimind.training.loop.lr_schedule import minimind_scheduler
from minimind.training.parallel.autoep import install_aux_loss
from minimind.training.run.inputs import RunInputs
from minimind.training.run.start_weights import start_weights
from minimind.training.run_dir.checks import disk_space_warning


def build_engine(config: RunConfig, inputs: RunInputs, total_steps: int):
    """The model and ``deepspeed.initialize``'s engine around it (schedule, AutoEP aux loss,
    checkpoint-write reporting); returns the engine and the parameter count."""
    model = MiniMindForCausalLM(inputs.model_config)
    start_weights(model, config, inputs)
    if config.model.activation_checkpointing:
        model.activation_checkpointing_enable()
    n_params = sum(p.numel() for p in model.parameters())
    size = config.model
    print0(f"model: {n_params / 1e6:.2f}M parameters, hidden {size.hidden_size} x {size.num_hidden_layers} layers"
           f"{' (MoE)' if size.use_moe else ''}, kernels {size.kernels}"
           f"{', activation checkpointing' if size.activation_checkpointing else ''}")
    scheduler = None if "scheduler" in inputs.ds_config else (
        lambda optimizer: minimind_scheduler(optimizer, total_steps, config.schedule.warmup_steps)
    )
    ds_config = inputs.ds_config
    if config.model.compile and inputs.ep_size is not None:  # AutoEP's token exchange stays eager
        ds_config = {**ds_config, "compile": {**ds_config.get("compile", {}), "autoep_non_moe": True}}
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=ds_config, lr_scheduler=scheduler
    )
    if config.model.compile:
        engine.compile()
        if engine.is_compiled:
            backend = get_accelerator().get_compile_backend()
            print0(f"torch.compile: the model compiles at its first forward ({backend} backend)")
    module_bytes = PRECISION_BYTES[precision_of(inputs.ds_config)]
    warning = disk_space_warning(inputs.save_dir, n_params, module_bytes, config.checkpoint.keep_checkpoints)
    if warning:
        print0(warning)
    if inputs.ep_size is not None:
        install_aux_loss(engine, inputs.model_config)
        print0(f"expert parallelism: AutoEP size {inputs.ep_size}, "
               f"{inputs.model_config.expert_count // inputs.ep_size} routed experts per rank")
    return engine, n_params


def model_dtype(ds_config: dict) -> torch.dtype:
    """The dtype DeepSpeed trains the module in."""
    return PRECISION_DTYPES[precision_of(ds_config)]
