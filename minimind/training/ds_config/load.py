"""Loading, overriding and checking a DeepSpeed JSON config before anything heavy runs.

The JSON in ``ds_configs/`` is the only DeepSpeed config; command-line batch flags
override its values. Every problem is a one-line ``ConfigError`` naming the file.
"""

import difflib
import json
from dataclasses import dataclass
from pathlib import Path

from minimind.errors import ConfigError
from minimind.training.ds_config.values import check_ds_config_values, check_section_objects

# Top-level sections and keys of DeepSpeed's config (docs: "DeepSpeed Configuration JSON").
KNOWN_TOP_LEVEL_KEYS = frozenset({
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer",
    "scheduler", "fp16", "bf16", "amp", "torch_autocast", "data_types", "gradient_clipping",
    "prescale_gradients", "gradient_predivide_factor", "communication_data_type", "sparse_gradients",
    "zero_optimization", "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer",
    "activation_checkpointing", "aio", "steps_per_print", "wall_clock_breakdown", "dump_state",
    "memory_breakdown", "flops_profiler", "tensorboard", "csv_monitor", "wandb", "comet", "comms_logger",
    "checkpoint", "elasticity", "autotuning", "compression_training", "data_efficiency",
    "curriculum_learning", "pipeline", "expert_parallel", "compile", "seq_parallel_communication_data_type",
    "disable_allgather", "dataloader_drop_last", "use_data_before_expert_parallelism", "nebula",
    "tensor_parallel", "weight_quantization", "hybrid_engine", "timers", "graph_harvesting",
    "use_node_local_storage", "load_universal", "zero_optimization_stage",
})


@dataclass(frozen=True)
class BatchPlan:
    """The resolved batch arithmetic: ``global_batch = micro_batch * accumulation * data_parallel``."""

    micro_batch: int
    accumulation: int
    data_parallel: int
    grad_clip: float

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.accumulation * self.data_parallel


def read_ds_config(path: str | Path) -> dict:
    """Read a DeepSpeed JSON file; missing files, bad JSON and unknown keys are ConfigErrors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: DeepSpeed config file not found")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    for key in config:
        if key not in KNOWN_TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(key, KNOWN_TOP_LEVEL_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown key {key!r}{hint}")
    return config


def resolve_ds_config(
    path: str | Path,
    data_parallel: int,
    fp16_supported: bool,
    micro_batch: int | None = None,
    accumulation: int | None = None,
    grad_clip: float | None = None,
    learning_rate: float | None = None,
) -> tuple[dict, BatchPlan]:
    """The config ``deepspeed.initialize`` gets, with flag overrides applied and batch sizes checked.

    ``train_batch_size`` is written as micro x accumulation x data-parallel; a value in the
    file that disagrees (or a missing micro-batch) is a ConfigError, as is fp16 where the
    accelerator refuses it, and any value DeepSpeed or torch would refuse once the flags
    have replaced theirs (``check_ds_config_values``).
    """
    config = read_ds_config(path)
    check_section_objects(config, path)
    if micro_batch is not None or accumulation is not None:
        config.pop("train_batch_size", None)  # written below from the flags
    if micro_batch is not None:
        config["train_micro_batch_size_per_gpu"] = micro_batch
    if accumulation is not None:
        config["gradient_accumulation_steps"] = accumulation
    if grad_clip is not None:
        config["gradient_clipping"] = grad_clip
    if learning_rate is not None and "optimizer" in config:
        config["optimizer"].setdefault("params", {})["lr"] = learning_rate
    check_ds_config_values(config, path)
    micro = config.get("train_micro_batch_size_per_gpu")
    accum = config.get("gradient_accumulation_steps", 1)
    if micro is None:
        raise ConfigError(f"{path}: set train_micro_batch_size_per_gpu (or pass --batch_size)")
    expected = micro * accum * data_parallel
    stated = config.get("train_batch_size")
    if stated is not None and stated != expected and micro_batch is None and accumulation is None:
        raise ConfigError(
            f"{path}: train_batch_size {stated} != micro-batch {micro} x accumulation {accum} x "
            f"data-parallel size {data_parallel} = {expected}"
        )
    config["train_batch_size"] = expected
    if config.get("fp16", {}).get("enabled") and not fp16_supported:
        raise ConfigError(f"{path}: fp16 is enabled but this accelerator does not support it; use bf16 or fp32")
    if config.get("fp16", {}).get("enabled") and config.get("bf16", {}).get("enabled"):
        raise ConfigError(f"{path}: fp16 and bf16 are both enabled; pick one")
    if "optimizer" not in config:
        raise ConfigError(f"{path}: needs an \"optimizer\" section (e.g. AdamW)")
    clip = float(config.get("gradient_clipping", 0.0))
    return config, BatchPlan(micro, accum, data_parallel, clip)

