"""Rank side of ``test_checkpoint_commands.py``: load a universal checkpoint into a fresh engine.

``main`` runs in the test's own process, a world of one (``tests.launcher.one_rank_in_this_process``).
Builds the model from the checkpoint's recorded ``model_config`` and a ZeRO-2 fp32 engine
from ``ds_configs/zero2_fp32.json`` at this world size with ``"checkpoint": {"load_universal":
true}``, loads ``UNIVERSAL_ROOT`` (tag from ``latest_universal``) and rank 0 writes every
parameter's full fp32 value, Adam moments and step, plus the engine's step count, to RESULT.
"""

from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

from minimind.checkpoint.locate import locate_checkpoint, model_config_dict, read_client_state
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.training.distributed.collectives import barrier
from minimind.training.distributed.process_group import init_process_group
from minimind.training.ds_config.load import resolve_ds_config

REPO_ROOT = Path(__file__).resolve().parents[1]
DS_CONFIG = REPO_ROOT / "ds_configs" / "zero2_fp32.json"


def main(universal_root: str, result_path: str) -> None:
    """Load ``universal_root`` into a fresh engine; rank 0 writes what it holds to ``result_path``."""
    location = locate_checkpoint(universal_root)
    config = MiniMindConfig.from_dict(model_config_dict(location, read_client_state(location)))
    init_process_group()
    world = dist.get_world_size()
    ds_config, _ = resolve_ds_config(DS_CONFIG, data_parallel=world, fp16_supported=False, micro_batch=2,
                                     accumulation=max(1, 2 // world))
    ds_config["checkpoint"] = {"load_universal": True}
    model = MiniMindForCausalLM(config)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    load_path, client_state = engine.load_checkpoint(str(location.root))
    assert load_path is not None, f"nothing loaded from {location.root}"
    result = {"global_steps": engine.global_steps, "position": client_state.get("position"), "params": {}}
    for name, param in engine.module.named_parameters():
        state = {"fp32": safe_get_full_fp32_param(param)}
        for key in ("exp_avg", "exp_avg_sq"):
            state[key] = safe_get_full_optimizer_state(param, key)
        result["params"][name] = {key: value.detach().cpu().clone() for key, value in state.items()}
    if dist.get_rank() == 0:
        torch.save(result, result_path)
    barrier()
