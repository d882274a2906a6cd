"""Which Hugging Face architecture a MiniMind model is exported as, and the mappings to and from the built-in ones.

A built-in ``transformers`` class is written wherever it computes what MiniMind computes (fp32
logits equal up to rounding), so that the export loads without ``trust_remote_code``:

- minimind3 dense: ``Qwen3ForCausalLM`` (RMSNorm over each query and key head before RoPE, a
  ``head_dim`` of its own), as upstream MiniMind's ``scripts/convert_model.py`` does;
- minimind3 MoE: ``Qwen3MoeForCausalLM`` with every layer sparse: softmax router, top-k, the
  weights renormalised with ``norm_topk_prob`` (for any k, as minimind3); its experts are fused
  tensors, ``gate_up_proj`` (experts, 2 * width, hidden) [gate; up] and ``down_proj``
  (experts, hidden, width);
- minimind2 dense: ``LlamaForCausalLM`` (no q/k norms, heads splitting the width).

Every other parameter keeps its name. minimind2 MoE keeps the bundled MiniMind code: its shared
experts have no built-in counterpart. So does a YaRN config (``inference_rope_scaling``) whose
frequencies transformers' ``yarn`` does not reproduce (checked at export). The config also records
``model_family``, an extra key transformers keeps.
"""

from dataclasses import dataclass

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from minimind.checkpoint.errors import CheckpointError
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.model.config import YARN_SCALING
from minimind.model.rope import rope_frequencies

HF_ARCHITECTURES = ("auto", "native", "custom")
CUSTOM_CLASS = "MiniMindForCausalLM"
# (model_family, use_moe) -> the built-in class computing the same model
NATIVE_CLASSES: dict[tuple[str, bool], type[PreTrainedModel]] = {
    ("minimind3", False): Qwen3ForCausalLM,
    ("minimind3", True): Qwen3MoeForCausalLM,
    ("minimind2", False): LlamaForCausalLM,
}
NATIVE_CLASS_OF_MODEL_TYPE = {model_class.config_class.model_type: model_class
                              for model_class in NATIVE_CLASSES.values()}
FAMILY_OF_MODEL_TYPE = {model_class.config_class.model_type: family
                        for (family, _), model_class in NATIVE_CLASSES.items()}
FUSED_EXPERTS = ("gate_up_proj", "down_proj")
# Config fields under the same name and meaning in MiniMind's config and the built-in ones; MOE_FIELDS: Qwen3-MoE's too
SHARED_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
    "tie_word_embeddings", "bos_token_id", "eos_token_id",
)
MOE_FIELDS = ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob", "router_aux_loss_coef")
# YaRN frequencies this close to MiniMind's (fp32, relative) are the same up to rounding
ROPE_RTOL = 1e-6


@dataclass(frozen=True)
class HfArchitecture:
    """The class an export is written as: a built-in one (``native``) or the bundled MiniMind code, and why."""

    class_name: str
    native: bool
    reason: str

    def describe(self) -> str:
        """One line for the command's output: which code the folder holds and why."""
        if self.native:
            return f"wrote {self.class_name} (built-in, no trust_remote_code): {self.reason}"
        return f"wrote custom MiniMind code (load with trust_remote_code=True): {self.reason}"


def choose_hf_architecture(config: MiniMindConfig, requested: str = "auto") -> HfArchitecture:
    """The architecture an export of ``config`` is written as; ``requested`` is ``--hf_arch``: ``auto`` (built-in
    where exact), ``native`` (built-in or a one-line ``CheckpointError``) or ``custom`` (the bundled code)."""
    if requested not in HF_ARCHITECTURES:
        raise CheckpointError(f"--hf_arch must be one of {', '.join(HF_ARCHITECTURES)}, got {requested!r}")
    if requested == "custom":
        return HfArchitecture(CUSTOM_CLASS, native=False, reason="asked for with --hf_arch custom")
    model_class = NATIVE_CLASSES.get((config.model_family, bool(config.use_moe)))
    if model_class is None:
        obstacle = f"no built-in architecture is mapped to {config.model_family} MoE"
        if config.shared_expert_count:
            obstacle = f"{config.model_family} MoE has shared experts, no built-in architecture has them"
    else:
        obstacle = rope_obstacle(config, native_config(config))
    if obstacle is None:
        kind = "MoE" if config.use_moe else "dense"
        return HfArchitecture(model_class.__name__, native=True,
                              reason=f"{config.model_family} {kind} is exactly {model_class.__name__}'s architecture")
    if requested == "native":
        raise CheckpointError(f"--hf_arch native: {obstacle}")
    return HfArchitecture(CUSTOM_CLASS, native=False, reason=obstacle)


def native_rope_parameters(config: MiniMindConfig) -> dict:
    """transformers' ``rope_parameters`` for MiniMind's RoPE: YaRN only where MiniMind applies it (a table longer
    than the original context), else plain RoPE with the config's theta."""
    yarn = config.yarn_scaling
    if yarn is None or config.max_position_embeddings <= yarn["original_max_position_embeddings"]:
        return {"rope_type": "default", "rope_theta": config.rope_theta}
    return {"rope_type": "yarn", "rope_theta": config.rope_theta, **yarn}


def rope_obstacle(config: MiniMindConfig, hf_config: PretrainedConfig) -> str | None:
    """Why transformers' RoPE for ``hf_config`` differs from MiniMind's, or None. Plain RoPE is the same formula;
    YaRN is compared by value (MiniMind bounds its ramp by head_dim / 2 - 1, transformers by head_dim - 1)."""
    parameters = hf_config.rope_parameters
    if parameters["rope_type"] == "default":
        return None
    theirs, attention_factor = ROPE_INIT_FUNCTIONS[parameters["rope_type"]](hf_config)
    ours = rope_frequencies(config.head_dim, config.rope_theta, config.max_position_embeddings, config.yarn_scaling)
    if attention_factor == YARN_SCALING["attention_factor"] and torch.allclose(theirs, ours, rtol=ROPE_RTOL, atol=0):
        return None
    return "transformers' yarn RoPE gives other frequencies than MiniMind's YaRN for this config"


def native_config(config: MiniMindConfig) -> PretrainedConfig:
    """The built-in class's config for a MiniMind config that has one (``NATIVE_CLASSES``)."""
    model_class = NATIVE_CLASSES[(config.model_family, bool(config.use_moe))]
    fields = {name: getattr(config, name) for name in SHARED_FIELDS}
    fields.update(rope_parameters=native_rope_parameters(config), attention_bias=False,
                  model_family=config.model_family)
    if model_class is LlamaForCausalLM:
        return LlamaConfig(**fields, mlp_bias=False)
    if model_class is Qwen3ForCausalLM:
        return Qwen3Config(**fields, use_sliding_window=False)
    moe_fields = {name: getattr(config, name) for name in MOE_FIELDS}
    return Qwen3MoeConfig(**fields, **moe_fields, use_sliding_window=False, decoder_sparse_step=1, mlp_only_layers=[])


def native_model(model: MiniMindForCausalLM) -> PreTrainedModel:
    """The built-in class's model (eval mode) holding ``model``'s weights, in their dtype."""
    config = native_config(model.config)
    native = NATIVE_CLASSES[(model.config.model_family, bool(model.config.use_moe))](config)
    native.load_state_dict(fused_experts_state(model.state_dict(), model.config), strict=True)
    return native.to(model.dtype).eval()


def fused_experts_state(state: dict[str, torch.Tensor], config: MiniMindConfig) -> dict[str, torch.Tensor]:
    """MiniMind's parameters under the built-in class's names: each layer's per-expert SwiGLU weights fused."""
    if not config.use_moe:
        return dict(state)
    fused = {key: tensor for key, tensor in state.items() if ".mlp.experts." not in key}
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}.mlp.experts"

        def stacked(name: str, prefix: str = prefix) -> torch.Tensor:  # (experts, out, in)
            return torch.stack([state[f"{prefix}.{expert}.{name}.weight"] for expert in range(config.expert_count)])

        fused[f"{prefix}.gate_up_proj"] = torch.cat([stacked("gate_proj"), stacked("up_proj")], dim=1)
        fused[f"{prefix}.down_proj"] = stacked("down_proj")
    return fused


def per_expert_state(state: dict[str, torch.Tensor], config: MiniMindConfig) -> dict[str, torch.Tensor]:
    """The inverse of ``fused_experts_state``: a built-in model's parameters under MiniMind's names."""
    if not config.use_moe:
        return dict(state)
    split = {key: tensor for key, tensor in state.items() if not key.endswith(FUSED_EXPERTS)}
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}.mlp.experts"
        gate, up = state[f"{prefix}.gate_up_proj"].chunk(2, dim=1)
        for name, weights in (("gate_proj", gate), ("up_proj", up), ("down_proj", state[f"{prefix}.down_proj"])):
            for expert in range(config.expert_count):
                split[f"{prefix}.{expert}.{name}.weight"] = weights[expert]
    return split


def minimind_config(hf_config: PretrainedConfig) -> MiniMindConfig:
    """The MiniMind config a built-in class's config describes; a config MiniMind cannot compute exactly
    (another model type, sliding windows, dense layers among MoE ones, another RoPE) is a one-line error."""
    model_type = hf_config.model_type
    if model_type not in FAMILY_OF_MODEL_TYPE:
        raise CheckpointError(f"model_type {model_type!r} is none of {', '.join(FAMILY_OF_MODEL_TYPE)}")
    rope = dict(hf_config.rope_parameters)
    yarn = {"rope_type": "yarn", "rope_theta": rope["rope_theta"], **YARN_SCALING}
    unsupported = [
        (getattr(hf_config, "sliding_window", None) is not None, "a sliding window"),
        (getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False), "biases"),
        (getattr(hf_config, "decoder_sparse_step", 1) != 1 or getattr(hf_config, "mlp_only_layers", None),
         "dense layers among the MoE layers"),
        (rope["rope_type"] != "default" and rope != yarn, f"RoPE {rope}"),
    ]
    found = [what for present, what in unsupported if present]
    if found:
        raise CheckpointError(f"this {model_type} model has {', '.join(found)}, which MiniMind has not")
    fields = {name: getattr(hf_config, name) for name in SHARED_FIELDS}
    fields.update(model_family=FAMILY_OF_MODEL_TYPE[model_type], rope_theta=rope["rope_theta"],
                  inference_rope_scaling=rope["rope_type"] == "yarn")
    if model_type == "qwen3_moe":
        fields.update({name: getattr(hf_config, name) for name in MOE_FIELDS}, use_moe=True)
    return MiniMindConfig(**fields)


def minimind_model(native: PreTrainedModel) -> MiniMindForCausalLM:
    """This project's model (eval mode) holding a built-in class's weights (``minimind_config`` of its config)."""
    config = minimind_config(native.config)
    model = MiniMindForCausalLM(config)
    model.load_state_dict(per_expert_state(native.state_dict(), config), strict=True)
    return model.to(native.dtype).eval()
