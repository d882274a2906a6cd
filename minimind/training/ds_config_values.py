"""Type, range and finiteness of the values in a DeepSpeed JSON, checked before anything runs.

DeepSpeed validates its sections with pydantic models inside ``deepspeed.initialize``, after
the process group and the model exist, and torch checks the optimizer's numbers when the
optimizer is built; both report a bad value as a traceback. Here the same pydantic models,
torch's optimizer rules and a finiteness check run at start-up, and the first problem is one
``ConfigError`` naming the file and the key: ``ds.json: optimizer.params.lr must be ...``.
"""

import math
from collections.abc import Iterator
from pathlib import Path

import pydantic
from deepspeed.compile.config import CompileConfig
from deepspeed.monitor.config import CometConfig, CSVConfig, TensorBoardConfig, WandbConfig
from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config
from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

from minimind.errors import ConfigError

# Sections DeepSpeed reads through a pydantic model: the model checks their types and ranges.
SECTION_MODELS = {
    "zero_optimization": DeepSpeedZeroConfig,
    "fp16": DeepSpeedFP16Config,
    "bf16": DeepSpeedBF16Config,
    "tensorboard": TensorBoardConfig,
    "wandb": WandbConfig,
    "csv_monitor": CSVConfig,
    "comet": CometConfig,
    "compile": CompileConfig,
}
OBJECT_SECTIONS = (*SECTION_MODELS, "optimizer", "scheduler", "checkpoint", "expert_parallel",
                   "activation_checkpointing", "flops_profiler", "comms_logger", "data_types")
POSITIVE_INTEGERS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                     "steps_per_print")


def check_ds_config_values(config: dict, path: str | Path) -> None:
    """Raise ``ConfigError`` at the first value of ``config`` (read from ``path``) that DeepSpeed or
    torch would reject with a traceback: a non-finite number anywhere, a section that is not an
    object, a batch size that is not a positive integer, a negative clip, or a value its section's
    rules refuse (DeepSpeed's pydantic models; torch's AdamW rules for the optimizer)."""
    for where, value in non_finite_numbers(config):
        raise ConfigError(f"{path}: {where} is {value}, not a finite number")
    for section in OBJECT_SECTIONS:
        if section in config and not isinstance(config[section], dict):
            raise ConfigError(f"{path}: {section} must be a JSON object, got {config[section]!r}")
    for key in POSITIVE_INTEGERS:
        if key in config and not is_integer(config[key], minimum=1):
            raise ConfigError(f"{path}: {key} must be a positive integer, got {config[key]!r}")
    if "gradient_clipping" in config and not is_number(config["gradient_clipping"], minimum=0):
        raise ConfigError(f"{path}: gradient_clipping must be a number >= 0, got {config['gradient_clipping']!r}")
    for section, model in SECTION_MODELS.items():
        if section in config:
            check_with_model(model, config[section], section, path)
    if "optimizer" in config:
        check_optimizer(config["optimizer"], path)
    if "scheduler" in config:
        check_scheduler(config["scheduler"], path)


def non_finite_numbers(value, where: str = "") -> Iterator[tuple[str, float]]:
    """``(key path, value)`` of every NaN or infinity in a parsed JSON value (Python's ``json``
    reads ``NaN`` and ``Infinity``)."""
    if isinstance(value, float) and not math.isfinite(value):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from non_finite_numbers(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from non_finite_numbers(item, f"{where}[{index}]")


def is_number(value, minimum: float | None = None) -> bool:
    """A JSON number (not a boolean), at least ``minimum`` when given."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def is_integer(value, minimum: int | None = None) -> bool:
    """A JSON integer (not a boolean), at least ``minimum`` when given."""
    return isinstance(value, int) and is_number(value, minimum)


def check_with_model(model: type[pydantic.BaseModel], section: dict, name: str, path: str | Path) -> None:
    """Validate ``section`` with DeepSpeed's pydantic ``model``; its first complaint is a ConfigError."""
    try:
        model(**section)
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in (name, *first["loc"]))
        raise ConfigError(f"{path}: {key}: {first['msg']}, got {first.get('input')!r}") from None


def check_optimizer(optimizer: dict, path: str | Path) -> None:
    """The optimizer's type is a name and its params satisfy torch's AdamW rules (what torch's and
    DeepSpeed's Adam variants check when they are built)."""
    if not isinstance(optimizer.get("type"), str):
        raise ConfigError(f"{path}: optimizer.type must be a name such as \"AdamW\", got {optimizer.get('type')!r}")
    params = optimizer.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: optimizer.params must be a JSON object, got {params!r}")
    for key in ("lr", "eps", "weight_decay"):
        if key in params and not is_number(params[key], minimum=0):
            raise ConfigError(f"{path}: optimizer.params.{key} must be a number >= 0, got {params[key]!r}")
    betas = params.get("betas", [0.9, 0.999])
    if not (isinstance(betas, list) and len(betas) == 2 and all(is_number(b, minimum=0) and b < 1 for b in betas)):
        raise ConfigError(f"{path}: optimizer.params.betas must be two numbers in [0, 1), got {betas!r}")


def check_scheduler(scheduler: dict, path: str | Path) -> None:
    """The scheduler's type is a name and its params an object (DeepSpeed's schedulers clamp
    their own numbers; non-finite ones are refused with the rest of the file)."""
    if not isinstance(scheduler.get("type"), str):
        raise ConfigError(f"{path}: scheduler.type must be a name such as \"WarmupCosineLR\", "
                          f"got {scheduler.get('type')!r}")
    if not isinstance(scheduler.get("params", {}), dict):
        raise ConfigError(f"{path}: scheduler.params must be a JSON object, got {scheduler['params']!r}")
