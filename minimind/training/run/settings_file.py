"""``{save_dir}/run_settings.json``: what the latest run of a save folder was started with, for its report."""

import json
import sys
import time
from pathlib import Path

from minimind.data import MixedSamples
from minimind.model.precision import precision_of
from minimind.training.config import RunConfig
from minimind.training.distributed.world import global_rank
from minimind.training.position import TrainingPosition
from minimind.training.run.inputs import RunInputs
from minimind.training.run_dir.files import RUN_SETTINGS_FILE


def run_settings(config: RunConfig, inputs: RunInputs, n_params: int, start: TrainingPosition,
                 total_steps: int, mixture: MixedSamples | None = None) -> dict:
    """The command, the resolved batch and precision, the model and the data of this run (with the mixture's
    realised shares)."""
    batch, model_config, data = inputs.batch, inputs.model_config, config.data
    evaluation = (f"{data.eval_fraction:g} of the data held out" if data.eval_fraction
                  else data.eval_data_path)
    return {
        "command": [part for part in sys.argv if not part.startswith("--local_rank")],  # the launcher adds it
        "stage": config.stage.name,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumed_from_step": start.step if start.step else None,
        "total_steps": total_steps,
        "world_size": batch.data_parallel,
        "precision": precision_of(inputs.ds_config),
        "zero_stage": inputs.ds_config.get("zero_optimization", {}).get("stage", 0),
        "micro_batch": batch.micro_batch,
        "accumulation": batch.accumulation,
        "global_batch": batch.global_batch,
        "max_seq_len": data.max_seq_len,
        "parameters": n_params,
        "model": {name: getattr(model_config, name) for name in (
            "model_family", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "vocab_size", "use_moe")},
        "weights": str(config.weights_path()),
        "from_weight": None if config.from_weight_path() is None else str(config.from_weight_path()),
        "data": [str(path) for path in inputs.data.data_paths] or "the bundled corpus",
        "eval": evaluation,
        **({"mixture": mixture.summary(), "mixture_exhaust": mixture.exhaust} if mixture is not None else {}),
    }


def write_run_settings(save_dir: Path, settings: dict) -> None:
    """Rank 0 writes ``settings`` to ``{save_dir}/run_settings.json`` (replacing an earlier run's)."""
    if global_rank() == 0:
        (save_dir / RUN_SETTINGS_FILE).write_text(json.dumps(settings, indent=1, default=str) + "\n", encoding="utf-8")
