"""What a checkpoint holds, in a few lines, from its metadata only (no weight or optimizer tensor is read)."""

from minimind.checkpoint.autoep_names import saved_expert_parallel_size
from minimind.checkpoint.locate import CheckpointLocation, read_client_state
from minimind.model.precision import precision_of

SUMMARY_CONFIG_FIELDS = ("model_family", "hidden_size", "num_hidden_layers", "num_attention_heads",
                         "num_key_value_heads", "head_dim", "vocab_size", "intermediate_size", "use_moe",
                         "n_routed_experts", "num_experts", "moe_intermediate_size", "num_experts_per_tok")


def describe_checkpoint(location: CheckpointLocation) -> list[str]:
    """Tag, step, world size, ep_size, ZeRO stage, dtype, model config and data position, one item a line."""
    state = read_client_state(location)
    ds_config = state.get("resolved_ds_config") or state.get("ds_config") or {}
    position = state.get("position") or {}
    config = state.get("model_config") or {}
    kind = "universal" if location.is_universal else "ZeRO"
    return [
        f"checkpoint: {location.tag_dir} ({kind}, tag {location.tag})",
        f"step: {position.get('step', state.get('global_steps'))} (DeepSpeed global_steps {state.get('global_steps')})",
        f"data-parallel world size: {state.get('dp_world_size')}; "
        f"expert-parallel size: {saved_expert_parallel_size(state) or 'none'}",
        f"ZeRO stage: {ds_config.get('zero_optimization', {}).get('stage', 0)}; precision: {precision_of(ds_config)}",
        "model: " + ", ".join(f"{key}={config[key]}" for key in SUMMARY_CONFIG_FIELDS if key in config),
        f"data position: epoch {position.get('epoch')}, sample {position.get('sample_in_epoch')} of the epoch",
    ]
