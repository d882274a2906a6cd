"""Attention inside packed windows, where several sequences share a row and none may attend another.

Two ways to keep each sequence to itself, chosen by ``--packed_attention``:

- ``mask``: the dense block-diagonal causal mask (batch, 1, seq, seq) handed to SDPA or the eager attention.
  Exact everywhere; it is built and read for every layer, and SDPA falls back from its flash kernel to one that
  takes a mask.
- ``flex``: PyTorch's FlexAttention with a ``BlockMask`` built once per micro-batch from the segment ids: the
  kernel skips the blocks two sequences never share and never materialises the (seq, seq) mask. On CUDA it runs
  ``torch.compile``'d (its fused kernel); elsewhere eagerly (exact, and slow: the unfused reference).
- ``auto``: ``flex`` on CUDA, ``mask`` elsewhere.

FlexAttention has no attention dropout: a model with ``dropout > 0`` training on packed windows takes ``mask``.
"""

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

PACKED_ATTENTION = ("auto", "flex", "mask")


def block_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Boolean attention mask (True = may attend, SDPA's convention) of packed windows: query i attends key j when
    j <= i and both lie in the same segment. ``segment_ids``: (batch, seq); returns (batch, 1, seq, seq)."""
    seq = segment_ids.shape[-1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=segment_ids.device).tril()
    return ((segment_ids[:, :, None] == segment_ids[:, None, :]) & causal)[:, None]


def block_causal_block_mask(segment_ids: torch.Tensor) -> BlockMask:
    """FlexAttention's ``BlockMask`` of the same rule as ``block_causal_mask``, for every head alike."""
    batch, seq = segment_ids.shape

    def same_segment_causal(b, h, query, key):
        return (segment_ids[b, query] == segment_ids[b, key]) & (key <= query)

    return create_block_mask(same_segment_causal, batch, None, seq, seq, device=segment_ids.device)


def resolve_packed_attention(impl: str, device: torch.device) -> str:
    """``flex`` or ``mask``: ``auto`` is FlexAttention on CUDA, the dense mask elsewhere."""
    if impl not in PACKED_ATTENTION:
        raise ValueError(f"packed attention must be one of {', '.join(PACKED_ATTENTION)}, got {impl!r}")
    if impl == "auto":
        return "flex" if device.type == "cuda" else "mask"
    return impl


def packed_attention_mask(segment_ids: torch.Tensor, impl: str = "auto") -> torch.Tensor | BlockMask:
    """The ``attention_mask`` that keeps each packed sequence to itself: a ``BlockMask`` (``flex``) or the dense
    boolean mask (``mask``); ``auto`` picks by the device of ``segment_ids``."""
    if resolve_packed_attention(impl, segment_ids.device) == "flex":
        return block_causal_block_mask(segment_ids)
    return block_causal_mask(segment_ids)


# FlexAttention's fused kernel, compiled at its first call (eager FlexAttention materialises the scores).
COMPILED_FLEX_ATTENTION = torch.compile(flex_attention, dynamic=False)


def flex_packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask) -> torch.Tensor:
    """Attention of ``q`` (batch, heads, seq, dim) over ``k``, ``v`` (batch, kv heads, seq, dim; grouped heads
    allowed) under ``block_mask``: compiled on CUDA, eager elsewhere."""
    attend = COMPILED_FLEX_ATTENTION if q.device.type == "cuda" else flex_attention
    return attend(q, k, v, block_mask=block_mask, enable_gqa=k.shape[1] != q.shape[1])
