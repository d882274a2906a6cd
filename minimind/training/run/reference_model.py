"""DPO's frozen reference model: ``--from_weight``'s weights in their own DeepSpeed engine, without an optimizer.

Under ZeRO-3 the reference is partitioned over the ranks as the policy is (never a full copy per GPU); under
ZeRO-0/1/2, which keep a full copy of the policy's weights on every rank anyway, it is one plain copy in the
training precision (ZeRO stage 0), as TRL prepares its reference models. It is always read from the ``.pth``
(also when the run resumes): the checkpoint records that file's digest, and a resume refuses other weights.
"""

import deepspeed

from minimind.model import MiniMindForCausalLM
from minimind.model.pth_weights import load_minimind_pth
from minimind.training.config import RunConfig
from minimind.training.distributed.rank_print import print0
from minimind.training.run.inputs import RunInputs

# What an engine that only runs forward passes has no use for: the optimizer and its schedule, and the monitors
# and profiler, which the policy's engine already runs (a second one would log twice into the same place).
TRAINING_ONLY_KEYS = ("optimizer", "scheduler", "gradient_clipping", "tensorboard", "wandb", "csv_monitor", "comet",
                      "flops_profiler")


def reference_ds_config(ds_config: dict) -> dict:
    """The reference engine's config from the policy's: no optimizer or schedule; ZeRO-3 kept (without offloading
    an optimizer it does not have), any other stage becomes stage 0."""
    config = {key: value for key, value in ds_config.items() if key not in TRAINING_ONLY_KEYS}
    zero = dict(config.get("zero_optimization", {}))
    if zero.get("stage", 0) == 3:
        zero.pop("offload_optimizer", None)
        config["zero_optimization"] = zero
    else:
        config["zero_optimization"] = {"stage": 0}
    return config


def reference_engine(config: RunConfig, inputs: RunInputs):
    """The frozen reference model of a DPO run, in eval mode, called without gradients by the DPO objective."""
    model = MiniMindForCausalLM(inputs.model_config)
    load_minimind_pth(model, config.from_weight_path())
    model.requires_grad_(False)
    engine, _, _, _ = deepspeed.initialize(model=model, config=reference_ds_config(inputs.ds_config))
    engine.eval()
    stage = engine.zero_optimization_stage()
    print0(f"reference model: {config.from_weight_path()} (--from_weight {config.checkpoint.from_weight}), frozen, "
           f"{'partitioned over the ranks (ZeRO-3)' if stage == 3 else 'one copy per rank'}")
    return engine
