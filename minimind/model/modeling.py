"""MiniMind decoder and causal-LM head, as ``transformers`` models."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from minimind.model.config import MiniMindConfig
from minimind.model.layers import Attention, FeedForward, RMSNorm
from minimind.model.loss import token_cross_entropy
from minimind.model.moe import MOEFeedForward, MoEGate
from minimind.model.rope import rope_tables


class MiniMindBlock(GradientCheckpointingLayer):
    """Pre-norm transformer layer: ``h += attn(norm(h)); h += mlp(norm(h))``.

    ``model.activation_checkpointing_enable()`` recomputes each block in the backward instead of
    keeping its activations (``transformers``' per-layer activation checkpointing).
    """

    def __init__(self, layer_idx: int, config: MiniMindConfig):
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.kernel_impl)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.kernel_impl)
        self.mlp = MOEFeedForward(config) if config.use_moe else FeedForward(config)

    def forward(self, hidden, rope, cache=None, attention_mask=None, packed_positions=None) -> torch.Tensor:
        attended = self.self_attn(self.input_layernorm(hidden), rope, cache, attention_mask, packed_positions)
        # hidden + attended and its norm in one pass (one fused kernel on Triton)
        normed, hidden = self.post_attention_layernorm(attended, residual=hidden)
        return hidden + self.mlp(normed)


class MiniMindPreTrainedModel(PreTrainedModel):
    """Shared ``transformers`` plumbing: config class, weight init, cache support."""

    config_class = MiniMindConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MiniMindBlock"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, MoEGate) and self.config.model_family == "minimind2":
            return  # minimind2's router keeps its kaiming init: MiniMind's is no nn.Linear, which transformers re-inits
        super()._init_weights(module)
        if isinstance(module, MiniMindModel):
            cos, sin = module.rope_tables()
            module.freqs_cos.copy_(cos)
            module.freqs_sin.copy_(sin)


class MiniMindModel(MiniMindPreTrainedModel):
    """Embedding, the stack of blocks and the final norm. Returns hidden states and the summed aux loss."""

    def __init__(self, config: MiniMindConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(MiniMindBlock(i, config) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.kernel_impl)
        cos, sin = self.rope_tables()
        self.register_buffer("freqs_cos", cos, persistent=False)
        self.register_buffer("freqs_sin", sin, persistent=False)
        self.post_init()

    def rope_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (max_position_embeddings, head_dim) cos/sin tables this config asks for."""
        config = self.config
        return rope_tables(
            config.head_dim, config.rope_theta, config.max_position_embeddings, config.yarn_scaling
        )

    def forward(
        self,
        input_ids: torch.LongTensor,  # (batch, seq)
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        packed_positions: torch.Tensor | None = None,  # (batch, seq): packed sequences, see ``Attention``
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(hidden (batch, seq, hidden), aux_loss scalar)``."""
        if packed_positions is not None and cache is not None:
            raise ValueError("packed_positions are for packed training sequences; a cache counts its own")
        past = cache.get_seq_length() if cache is not None else 0
        if past + input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence of {past + input_ids.shape[1]} positions exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings}"
            )
        hidden = self.dropout(self.embed_tokens(input_ids))
        rope = (self.freqs_cos, self.freqs_sin)
        for layer in self.layers:
            hidden = layer(hidden, rope, cache, attention_mask, packed_positions)
        aux_loss = sum(
            (layer.mlp.aux_loss for layer in self.layers if isinstance(layer.mlp, MOEFeedForward)),
            start=hidden.new_zeros((), dtype=torch.float32),
        )
        return self.norm(hidden), aux_loss


@dataclass
class MiniMindCausalLMOutput(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` plus the MoE auxiliary loss (zero for dense models)."""

    aux_loss: torch.FloatTensor | None = None


class MiniMindForCausalLM(MiniMindPreTrainedModel, GenerationMixin):
    """MiniMind language model, its input and output embeddings tied unless ``tie_word_embeddings`` is off.

    ``loss`` is the cross-entropy of shifted tokens (``IGNORE_INDEX`` labels skipped);
    ``aux_loss`` is reported separately, as MiniMind's trainer adds it: ``loss + aux_loss``.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MiniMindConfig | None = None):
        config = config if config is not None else MiniMindConfig()
        super().__init__(config)
        self.model = MiniMindModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def select_kernels(self, impl: str) -> None:
        """Run RMSNorm and RoPE with ``impl`` (``auto|triton|torch``) from now on, in every layer (e.g. a model
        trained with ``--kernels triton``, generating on a CPU)."""
        self.config.kernel_impl = impl
        self.config.validate_shapes()
        for module in self.modules():
            if isinstance(module, (RMSNorm, Attention)):
                module.kernel_impl = impl

    def forward(
        self,
        input_ids: torch.LongTensor,  # (batch, seq)
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,  # (batch, seq), unshifted
        cache: Cache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        past_key_values: Cache | None = None,
        packed_positions: torch.LongTensor | None = None,  # (batch, seq): packed sequences, see ``Attention``
        **kwargs,
    ) -> MiniMindCausalLMOutput:
        """Logits (batch, kept positions, vocab), and the loss when ``labels`` are given.

        ``past_key_values`` is accepted as the older name of ``cache``. Packed sequences (several per row, none
        attending another) pass ``packed_positions`` (batch, seq), restarting at 0 for each sequence, and the
        ``attention_mask`` of ``minimind.model.packed_attention.packed_attention_mask`` (a boolean (batch, 1, seq,
        seq), or FlexAttention's ``BlockMask``).
        """
        cache = cache if cache is not None else past_key_values
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        hidden, aux_loss = self.model(input_ids, attention_mask=attention_mask, cache=cache,
                                      packed_positions=packed_positions)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = token_cross_entropy(logits[:, :-1], labels[:, 1:])
        return MiniMindCausalLMOutput(
            loss=loss, logits=logits, cache=cache if use_cache else None, aux_loss=aux_loss
        )
