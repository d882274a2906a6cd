"""The model configuration: MiniMind's fields, names and defaults."""

from transformers import PretrainedConfig

from minimind.errors import UserInputError
from minimind_kernels.dispatch import IMPLEMENTATIONS

YARN_SCALING = {
    "factor": 16,
    "original_max_position_embeddings": 2048,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "attention_factor": 1.0,
}


class ModelConfigError(UserInputError):
    """A model configuration the architecture cannot build, described in one line."""


def default_intermediate_size(hidden_size: int) -> int:
    """MiniMind's SwiGLU width: ``64 * ceil(int(hidden_size * 8 / 3) / 64)`` (1408 at 512)."""
    return 64 * ((int(hidden_size * 8 / 3) + 63) // 64)


class MiniMindConfig(PretrainedConfig):
    """Configuration of a MiniMind decoder (dense or MoE).

    Every field keeps MiniMind's name and default. ``kernel_impl`` (``auto|triton|torch``)
    is this project's addition: which implementation of RMSNorm and RoPE the model runs.
    """

    model_type = "minimind"

    def __init__(
        self,
        dropout: float = 0.0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        hidden_act: str = "silu",
        hidden_size: int = 512,
        intermediate_size: int | None = None,
        max_position_embeddings: int = 32768,
        num_attention_heads: int = 8,
        num_hidden_layers: int = 8,
        num_key_value_heads: int = 2,
        vocab_size: int = 6400,
        rms_norm_eps: float = 1e-5,
        rope_theta: float = 1e6,
        inference_rope_scaling: bool = False,
        flash_attn: bool = True,
        use_moe: bool = False,
        num_experts_per_tok: int = 2,
        n_routed_experts: int = 4,
        n_shared_experts: int = 1,
        scoring_func: str = "softmax",
        aux_loss_alpha: float = 0.01,
        seq_aux: bool = True,
        norm_topk_prob: bool = True,
        kernel_impl: str = "auto",
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        self.dropout = dropout
        self.hidden_act = hidden_act
        self.hidden_size = hidden_size
        self.intermediate_size = (
            default_intermediate_size(hidden_size) if intermediate_size is None else intermediate_size
        )
        self.max_position_embeddings = max_position_embeddings
        self.num_attention_heads = num_attention_heads
        self.num_hidden_layers = num_hidden_layers
        self.num_key_value_heads = num_key_value_heads
        self.vocab_size = vocab_size
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.inference_rope_scaling = inference_rope_scaling
        self.flash_attn = flash_attn
        self.use_moe = use_moe
        self.num_experts_per_tok = num_experts_per_tok
        self.n_routed_experts = n_routed_experts
        self.n_shared_experts = n_shared_experts
        self.scoring_func = scoring_func
        self.aux_loss_alpha = aux_loss_alpha
        self.seq_aux = seq_aux
        self.norm_topk_prob = norm_topk_prob
        self.kernel_impl = kernel_impl
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate_shapes()

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def yarn_scaling(self) -> dict | None:
        """MiniMind's YaRN parameters when ``inference_rope_scaling`` is on, else None."""
        return dict(YARN_SCALING) if self.inference_rope_scaling else None

    def validate_shapes(self) -> None:
        """Reject head counts, expert counts and options the architecture cannot build."""
        if self.hidden_size % self.num_attention_heads:
            raise ModelConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.head_dim % 2:
            raise ModelConfigError(f"head_dim {self.head_dim} must be even for rotate-half RoPE")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelConfigError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.use_moe and not 1 <= self.num_experts_per_tok <= self.n_routed_experts:
            raise ModelConfigError(
                f"num_experts_per_tok {self.num_experts_per_tok} must be between 1 and "
                f"n_routed_experts {self.n_routed_experts}"
            )
        if self.scoring_func != "softmax":
            raise ModelConfigError(f"scoring_func {self.scoring_func!r} is not supported (MiniMind uses 'softmax')")
        if self.kernel_impl not in IMPLEMENTATIONS:
            raise ModelConfigError(f"kernel_impl must be one of {', '.join(IMPLEMENTATIONS)}, got {self.kernel_impl!r}")
