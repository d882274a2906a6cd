"""Type, range and finiteness of the values in a DeepSpeed JSON, checked before anything runs.

DeepSpeed validates its sections with pydantic models inside ``deepspeed.initialize``, after
the process group and the model exist, and torch checks the optimizer's numbers when the
optimizer is built; both report a bad value as a traceback. Here the same pydantic models,
torch's optimizer rules and a finiteness check run at start-up, and the first problem is one
``ConfigError`` naming the file and the key: ``ds.json: optimizer.params.lr must be ...``.
Values DeepSpeed accepts but this project's runs read differently (``"enabled": "auto"``) are
refused too.
"""

import difflib
import math
from collections.abc import Iterator
from pathlib import Path

import pydantic
import torch
from deepspeed.compile.config import CompileConfig
from deepspeed.monitor.config import CometConfig, CSVConfig, TensorBoardConfig, WandbConfig
from deepspeed.runtime import lr_schedules
from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS
from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config
from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

from minimind.errors import ConfigError, first_line

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
                     "steps_per_print")  # null allowed: DeepSpeed's default for steps_per_print


def check_ds_config_values(config: dict, path: str | Path) -> None:
    """Raise ``ConfigError`` at the first value of ``config`` (read from ``path``) that DeepSpeed or
    torch would reject with a traceback: a non-finite number anywhere, a section that is not an
    object, a batch size that is not a positive integer, a negative clip, or a value its section's
    rules refuse (DeepSpeed's pydantic models; torch's AdamW rules for the optimizer)."""
    for where, value in non_finite_numbers(config):
        raise ConfigError(f"{path}: {where} is {value}, not a finite number")
    check_section_objects(config, path)
    for key in POSITIVE_INTEGERS:
        if config.get(key) is not None and not is_integer(config[key], minimum=1):
            raise ConfigError(f"{path}: {key} must be a positive integer, got {config[key]!r}")
    for section in ("fp16", "bf16"):
        if config.get(section, {}).get("enabled") == "auto":
            raise ConfigError(f"{path}: {section}.enabled is \"auto\" (a Hugging Face Trainer setting that DeepSpeed "
                              "reads as false); write true or false")
    if "gradient_clipping" in config and not is_number(config["gradient_clipping"], minimum=0):
        raise ConfigError(f"{path}: gradient_clipping must be a number >= 0, got {config['gradient_clipping']!r}")
    for section, model in SECTION_MODELS.items():
        if section in config:
            check_with_model(model, config[section], section, path)
    if "optimizer" in config:
        check_optimizer(config["optimizer"], path)
    if "scheduler" in config:
        check_scheduler(config["scheduler"], path)


def check_section_objects(config: dict, path: str | Path) -> None:
    """Raise ``ConfigError`` when a section DeepSpeed reads as an object is anything else."""
    for section in OBJECT_SECTIONS:
        if section in config and not isinstance(config[section], dict):
            raise ConfigError(f"{path}: {section} must be a JSON object, got {config[section]!r}")


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
    """Validate ``section`` with DeepSpeed's pydantic ``model``; its first complaint is a ConfigError.

    Besides pydantic's errors, DeepSpeed's validators assert and its constructors raise
    ``TypeError``/``ValueError`` on some inputs (a renamed key given twice, a nested value of
    the wrong type): those are one line too.
    """
    try:
        model(**section)
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in (name, *first["loc"]))
        got = f", got {first.get('input')!r}" if first["loc"] else ""
        raise ConfigError(f"{path}: {key}: {first['msg']}{got}") from None
    except (AssertionError, TypeError, ValueError) as error:
        raise ConfigError(f"{path}: {name}: {first_line(error) or type(error).__name__}") from None


def check_optimizer(optimizer: dict, path: str | Path) -> None:
    """The optimizer is one DeepSpeed or torch knows, and its params satisfy torch's AdamW rules
    (what torch's and DeepSpeed's Adam variants check when they are built)."""
    name = optimizer.get("type")
    if not isinstance(name, str) or not known_optimizer(name):
        known = [*DEEPSPEED_OPTIMIZERS, *(n for n in dir(torch.optim) if n[0].isupper() and n != "Optimizer")]
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{path}: optimizer.type {name!r} is not an optimizer DeepSpeed or torch knows{hint}")
    params = optimizer.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: optimizer.params must be a JSON object, got {params!r}")
    for key in ("lr", "eps", "weight_decay"):
        if key in params and not is_number(params[key], minimum=0):
            raise ConfigError(f"{path}: optimizer.params.{key} must be a number >= 0, got {params[key]!r}")
    betas = params.get("betas", [0.9, 0.999])
    if not (isinstance(betas, list) and len(betas) == 2 and all(is_number(b, minimum=0) and b < 1 for b in betas)):
        raise ConfigError(f"{path}: optimizer.params.betas must be two numbers in [0, 1), got {betas!r}")


def known_optimizer(name: str) -> bool:
    """Whether DeepSpeed builds optimizer ``name``: one of its own (any case) or one of ``torch.optim``."""
    return name.lower() in DEEPSPEED_OPTIMIZERS or isinstance(getattr(torch.optim, name, None), type)


def check_scheduler(scheduler: dict, path: str | Path) -> None:
    """The scheduler is one DeepSpeed or torch knows; DeepSpeed's own take numbers (or booleans)
    for every param but ``warmup_type``."""
    name = scheduler.get("type")
    if not isinstance(name, str) or not (hasattr(lr_schedules, name) or hasattr(torch.optim.lr_scheduler, name)):
        close = difflib.get_close_matches(str(name), lr_schedules.VALID_LR_SCHEDULES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{path}: scheduler.type {name!r} is not a scheduler DeepSpeed or torch knows{hint}")
    params = scheduler.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: scheduler.params must be a JSON object, got {params!r}")
    if name not in lr_schedules.VALID_LR_SCHEDULES:
        return
    for key, value in params.items():
        if key == "warmup_type":
            if value not in ("log", "linear"):
                raise ConfigError(f"{path}: scheduler.params.warmup_type must be \"log\" or \"linear\", "
                                  f"got {value!r}")
        elif not isinstance(value, (int, float)):  # booleans are ints: DeepSpeed's flags such as cycle_momentum
            raise ConfigError(f"{path}: scheduler.params.{key} must be a number, got {value!r}")
