"""The dense building blocks of a MiniMind layer: RMSNorm, attention and the SwiGLU MLP.

minimind3's attention also normalizes each head's queries and keys (``q_norm``, ``k_norm`` over
head_dim) before RoPE; minimind2's has no such norms.

RMSNorm and RoPE go through the kernels' functional module (the seam that swaps PyTorch for the
fused Triton kernels); everything else is plain PyTorch.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache

from minimind.model.config import MiniMindConfig
from minimind.model.packed_attention import flex_packed_attention

# The folder kernels/ under the name the project installs it as: "kernels" is Hugging Face's package,
# which transformers imports (kernels/functional.py). The export bundler rewrites kernel_ops calls.
from minimind_kernels import functional as kernel_ops


class RMSNorm(nn.Module):
    """MiniMind RMSNorm: ``weight * (x.float() * rsqrt(mean(x^2) + eps)).type_as(x)``."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, kernel_impl: str = "auto"):
        super().__init__()
        self.eps = eps
        self.kernel_impl = kernel_impl
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The norm of ``x``; with ``residual``, ``(norm(x + residual), x + residual)`` in one fused
        kernel where the Triton kernels run. (Through ``forward``, so that ZeRO-3 gathers the weight.)"""
        if residual is not None:
            return kernel_ops.rms_norm_residual(x, residual, self.weight, self.eps, impl=self.kernel_impl)
        return kernel_ops.rms_norm(x, self.weight, self.eps, impl=self.kernel_impl)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Repeat K/V heads for grouped-query attention: (b, s, kv, d) -> (b, s, kv * n_rep, d)."""
    if n_rep == 1:
        return x
    batch, seq, kv_heads, head_dim = x.shape
    expanded = x[:, :, :, None, :].expand(batch, seq, kv_heads, n_rep, head_dim)
    return expanded.reshape(batch, seq, kv_heads * n_rep, head_dim)


class Attention(nn.Module):
    """Causal grouped-query self-attention with rotate-half RoPE and an optional KV cache; with the
    config's ``qk_norm`` (minimind3), RMSNorm of every query and key head before RoPE."""

    def __init__(self, config: MiniMindConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.n_rep = self.n_heads // self.n_kv_heads
        self.head_dim = config.head_dim
        self.kernel_impl = config.kernel_impl
        self.q_proj = nn.Linear(config.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=False)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, config.kernel_impl)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, config.kernel_impl)
        self.qk_norm = config.qk_norm
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.use_sdpa = config.flash_attn

    def forward(
        self,
        x: torch.Tensor,  # (batch, seq, hidden)
        rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin: (positions, head_dim)
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,  # (batch, past + seq), 1 = attend; or see below
        packed_positions: torch.Tensor | None = None,  # (batch, seq): each token's RoPE position
    ) -> torch.Tensor:
        """Attention of ``x`` over the cache and itself. Packed sequences pass ``packed_positions`` restarting at 0
        for each sequence and an ``attention_mask`` of ``minimind.model.packed_attention``: a boolean (batch, 1,
        seq, seq), True where a query may attend a key (a block-diagonal causal mask), or FlexAttention's
        ``BlockMask`` of the same rule: then nothing attends across sequences."""
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        past = cache.get_seq_length(self.layer_idx) if cache is not None else 0
        cos, sin = rope
        if packed_positions is None:
            q, k = kernel_ops.apply_rotary(q, k, cos, sin, position_offset=past, impl=self.kernel_impl)
        else:
            q, k = kernel_ops.apply_rotary_at_positions(q, k, cos, sin, packed_positions)
        if cache is not None:
            k, v = cache.update(k.transpose(1, 2), v.transpose(1, 2), self.layer_idx)
            k, v = k.transpose(1, 2), v.transpose(1, 2)
        q = q.transpose(1, 2)  # (batch, heads, seq, head_dim)
        if isinstance(attention_mask, BlockMask):
            out = self._flex(q, k.transpose(1, 2), v.transpose(1, 2), attention_mask)
            return self.resid_dropout(self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1)))
        if not self.use_sdpa:
            k, v = repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (batch, kv or all heads, past + seq, head_dim)
        if self.use_sdpa:
            out = self._sdpa(q, k, v, past, attention_mask)
        else:
            out = self._eager(q, k, v, past, attention_mask)
        out = out.transpose(1, 2).reshape(batch, seq, -1)
        return self.resid_dropout(self.o_proj(out))

    def _flex(self, q, k, v, block_mask: BlockMask) -> torch.Tensor:
        if self.training and self.dropout > 0:
            raise ValueError("FlexAttention has no attention dropout: train a model with dropout on packed windows "
                             "with --packed_attention mask")
        return flex_packed_attention(q, k, v, block_mask)

    def _sdpa(self, q, k, v, past: int, attention_mask: torch.Tensor | None) -> torch.Tensor:
        dropout = self.dropout if self.training else 0.0
        if attention_mask is not None and attention_mask.dim() == 4:  # the whole mask, causality included
            if k.shape[1] != q.shape[1] and not sdpa_takes_fewer_kv_heads(q, causal_only=False):
                k, v = k.repeat_interleave(self.n_rep, dim=1), v.repeat_interleave(self.n_rep, dim=1)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=dropout,
                                                  enable_gqa=k.shape[1] != q.shape[1])
        causal_only = past == 0 and (attention_mask is None or bool(attention_mask.all()))
        if k.shape[1] != q.shape[1] and not sdpa_takes_fewer_kv_heads(q, causal_only):
            k, v = k.repeat_interleave(self.n_rep, dim=1), v.repeat_interleave(self.n_rep, dim=1)
        gqa = k.shape[1] != q.shape[1]
        if causal_only:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=q.shape[2] > 1, enable_gqa=gqa)
        allowed = causal_allowed(q.shape[2], past, q.device)[None, None]  # (1, 1, seq, past + seq)
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, None, :].bool()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout, enable_gqa=gqa)

    def _eager(self, q, k, v, past: int, attention_mask: torch.Tensor | None) -> torch.Tensor:
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        if attention_mask is not None and attention_mask.dim() == 4:  # the whole mask, causality included
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores.masked_fill(~causal_allowed(q.shape[2], past, q.device), float("-inf"))
        if attention_mask is not None and attention_mask.dim() == 2:
            scores = scores + (1.0 - attention_mask[:, None, None, :].to(scores.dtype)) * -1e9
        probs = F.softmax(scores.float(), dim=-1).type_as(q)
        return self.attn_dropout(probs) @ v


def sdpa_takes_fewer_kv_heads(q: torch.Tensor, causal_only: bool) -> bool:
    """Whether SDPA runs a fast kernel on grouped K/V heads (``enable_gqa``), so that they need no copy:
    on CPU always (1.3x faster than copying, measured); on GPUs only its flash kernel takes them
    (half precision, no mask), the others fall back to the slow math kernel."""
    return q.device.type == "cpu" or (q.dtype in (torch.float16, torch.bfloat16) and causal_only)


def causal_allowed(seq: int, past: int, device: torch.device) -> torch.Tensor:
    """(seq, past + seq) boolean mask: query i may attend keys 0 .. past + i."""
    query_pos = torch.arange(seq, device=device)[:, None] + past
    key_pos = torch.arange(past + seq, device=device)[None, :]
    return key_pos <= query_pos


class FeedForward(nn.Module):
    """SwiGLU MLP: ``down(act(gate(x)) * up(x))``, ``intermediate_size`` wide (the config's when None)."""

    def __init__(self, config: MiniMindConfig, intermediate_size: int | None = None):
        super().__init__()
        width = config.intermediate_size if intermediate_size is None else intermediate_size
        self.gate_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.down_proj = nn.Linear(width, config.hidden_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.dropout = nn.Dropout(config.dropout)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x)))
