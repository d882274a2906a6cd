"""The model configuration: each MiniMind family's fields, names and defaults.

Two families share one class, chosen by ``model_family``:

- ``minimind2`` (the default): MiniMind's architecture up to release minimind2, its names and defaults.
- ``minimind3``: MiniMind's architecture from release minimind-3 on (upstream's ``model_minimind.py``):
  RMSNorm on each head's queries and keys, a settable ``head_dim``, a wider SwiGLU, and MoE layers of
  ``num_experts`` routed experts (top-1 by default) without shared experts.

Arguments a family shares but defaults differently default to None and take the family's value
(``FAMILY_DEFAULTS``); an option only the other family has is refused in one line.
"""

import math

from transformers import PretrainedConfig

from minimind.errors import UserInputError
from minimind_kernels.dispatch import IMPLEMENTATIONS

MODEL_FAMILIES = ("minimind2", "minimind3")

YARN_SCALING = {
    "factor": 16,
    "original_max_position_embeddings": 2048,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "attention_factor": 1.0,
}

# Each family's defaults for the arguments that default to None; a family lacking a key lacks that option.
# (None in the table: derived from other fields, see ``MiniMindConfig.__init__``.)
FAMILY_DEFAULTS = {
    "minimind2": {
        "hidden_size": 512, "intermediate_size": None, "num_key_value_heads": 2, "head_dim": None,
        "rms_norm_eps": 1e-5, "num_experts_per_tok": 2, "n_routed_experts": 4, "n_shared_experts": 1,
        "scoring_func": "softmax", "aux_loss_alpha": 0.01, "seq_aux": True,
    },
    "minimind3": {
        "hidden_size": 768, "intermediate_size": None, "num_key_value_heads": 4, "head_dim": None,
        "rms_norm_eps": 1e-6, "num_experts_per_tok": 1, "num_experts": 4, "moe_intermediate_size": None,
        "router_aux_loss_coef": 5e-4,
    },
}


class ModelConfigError(UserInputError):
    """A model configuration the architecture cannot build, described in one line."""


def default_intermediate_size(hidden_size: int, model_family: str = "minimind2") -> int:
    """The family's SwiGLU width: minimind2 ``64 * ceil(int(hidden * 8 / 3) / 64)`` (1408 at 512),
    minimind3 ``64 * ceil(hidden * pi / 64)`` (2432 at 768)."""
    if model_family == "minimind3":
        return math.ceil(hidden_size * math.pi / 64) * 64
    return 64 * ((int(hidden_size * 8 / 3) + 63) // 64)


def family_arguments(model_family: str, given: dict) -> dict:
    """The family-dependent arguments: ``given`` (None: unset) completed with the family's defaults.

    Raises ``ModelConfigError`` for an unknown family or an option only the other family has.
    """
    if model_family not in FAMILY_DEFAULTS:
        raise ModelConfigError(f"model_family must be one of {', '.join(MODEL_FAMILIES)}, got {model_family!r}")
    defaults = FAMILY_DEFAULTS[model_family]
    foreign = [name for name, value in given.items() if value is not None and name not in defaults]
    if foreign:
        raise ModelConfigError(f"{', '.join(foreign)}: not an option of model_family {model_family!r}")
    return {name: defaults[name] if given.get(name) is None else given[name] for name in defaults}


class MiniMindConfig(PretrainedConfig):
    """Configuration of a MiniMind decoder (dense or MoE) of either family.

    Every field keeps MiniMind's name and its family's default. ``kernel_impl`` (``auto|triton|torch``)
    is this project's addition: which implementation of RMSNorm and RoPE the model runs. The MoE
    properties (``expert_count``, ``expert_intermediate_size``, ``shared_expert_count``,
    ``aux_loss_coef``, ``topk_weights_normalized``) read either family's fields under one name.
    """

    model_type = "minimind"

    def __init__(
        self,
        dropout: float = 0.0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        hidden_act: str = "silu",
        hidden_size: int | None = None,
        intermediate_size: int | None = None,
        max_position_embeddings: int = 32768,
        num_attention_heads: int = 8,
        num_hidden_layers: int = 8,
        num_key_value_heads: int | None = None,
        vocab_size: int = 6400,
        rms_norm_eps: float | None = None,
        rope_theta: float = 1e6,
        inference_rope_scaling: bool = False,
        flash_attn: bool = True,
        use_moe: bool = False,
        num_experts_per_tok: int | None = None,
        n_routed_experts: int | None = None,
        n_shared_experts: int | None = None,
        scoring_func: str | None = None,
        aux_loss_alpha: float | None = None,
        seq_aux: bool | None = None,
        norm_topk_prob: bool = True,
        kernel_impl: str = "auto",
        tie_word_embeddings: bool = True,
        model_family: str = "minimind2",
        head_dim: int | None = None,
        num_experts: int | None = None,
        moe_intermediate_size: int | None = None,
        router_aux_loss_coef: float | None = None,
        **kwargs,
    ):
        family = family_arguments(model_family, {
            "hidden_size": hidden_size, "intermediate_size": intermediate_size,
            "num_key_value_heads": num_key_value_heads, "head_dim": head_dim, "rms_norm_eps": rms_norm_eps,
            "num_experts_per_tok": num_experts_per_tok, "n_routed_experts": n_routed_experts,
            "n_shared_experts": n_shared_experts, "scoring_func": scoring_func, "aux_loss_alpha": aux_loss_alpha,
            "seq_aux": seq_aux, "num_experts": num_experts, "moe_intermediate_size": moe_intermediate_size,
            "router_aux_loss_coef": router_aux_loss_coef,
        })
        hidden_size = family["hidden_size"]
        if family["intermediate_size"] is None:
            family["intermediate_size"] = default_intermediate_size(hidden_size, model_family)
        if family["head_dim"] is None:
            family["head_dim"] = hidden_size // num_attention_heads
        if model_family == "minimind3" and family["moe_intermediate_size"] is None:
            family["moe_intermediate_size"] = family["intermediate_size"]
        self.model_family = model_family
        self.dropout = dropout
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.num_attention_heads = num_attention_heads
        self.num_hidden_layers = num_hidden_layers
        self.vocab_size = vocab_size
        self.rope_theta = rope_theta
        self.inference_rope_scaling = inference_rope_scaling
        self.flash_attn = flash_attn
        self.use_moe = use_moe
        self.norm_topk_prob = norm_topk_prob
        self.kernel_impl = kernel_impl
        for name, value in family.items():
            setattr(self, name, value)
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate_shapes()

    @property
    def yarn_scaling(self) -> dict | None:
        """MiniMind's YaRN parameters when ``inference_rope_scaling`` is on, else None (the same in both families)."""
        return dict(YARN_SCALING) if self.inference_rope_scaling else None

    @property
    def qk_norm(self) -> bool:
        """Whether attention normalizes each head's queries and keys (``q_norm``, ``k_norm``) before RoPE."""
        return self.model_family == "minimind3"

    @property
    def expert_count(self) -> int:
        """Routed experts of a MoE layer (minimind2 ``n_routed_experts``, minimind3 ``num_experts``)."""
        return self.num_experts if self.model_family == "minimind3" else self.n_routed_experts

    @property
    def expert_intermediate_size(self) -> int:
        """SwiGLU width of one expert (minimind2 ``intermediate_size``, minimind3 ``moe_intermediate_size``)."""
        return self.moe_intermediate_size if self.model_family == "minimind3" else self.intermediate_size

    @property
    def shared_expert_count(self) -> int:
        """Always-on experts of a MoE layer (minimind2 ``n_shared_experts``; minimind3 has none)."""
        return 0 if self.model_family == "minimind3" else self.n_shared_experts

    @property
    def aux_loss_coef(self) -> float:
        """Weight of the load-balancing loss (minimind2 ``aux_loss_alpha``, minimind3 ``router_aux_loss_coef``)."""
        return self.router_aux_loss_coef if self.model_family == "minimind3" else self.aux_loss_alpha

    @property
    def topk_weights_normalized(self) -> bool:
        """Whether the top-k routing weights are divided by their sum: with ``norm_topk_prob``, for any k in
        minimind3, only for k > 1 in minimind2."""
        return bool(self.norm_topk_prob) and (self.model_family == "minimind3" or self.num_experts_per_tok > 1)

    def validate_shapes(self) -> None:
        """Reject head counts, expert counts and options the architecture cannot build."""
        if self.model_family == "minimind2":
            if self.hidden_size % self.num_attention_heads:
                raise ModelConfigError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                                       f"{self.num_attention_heads}")
            if self.head_dim != self.hidden_size // self.num_attention_heads:
                raise ModelConfigError(f"head_dim {self.head_dim} is not hidden_size / num_attention_heads: minimind2 "
                                       "splits the width among the heads (a head_dim of its own is minimind3's)")
            if self.scoring_func != "softmax":
                raise ModelConfigError(f"scoring_func {self.scoring_func!r} is not supported (MiniMind uses 'softmax')")
        if self.head_dim % 2:
            raise ModelConfigError(f"head_dim {self.head_dim} must be even for rotate-half RoPE")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelConfigError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.use_moe and not 1 <= self.num_experts_per_tok <= self.expert_count:
            raise ModelConfigError(
                f"num_experts_per_tok {self.num_experts_per_tok} must be between 1 and the {self.expert_count} experts"
            )
        if self.kernel_impl not in IMPLEMENTATIONS:
            raise ModelConfigError(f"kernel_impl must be one of {', '.join(IMPLEMENTATIONS)}, got {self.kernel_impl!r}")
