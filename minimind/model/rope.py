"""Rotary position tables (rotate-half layout), with MiniMind's optional YaRN scaling."""

import math

import torch


def rope_frequencies(head_dim: int, theta: float, max_positions: int, yarn: dict | None = None) -> torch.Tensor:
    """Inverse frequencies ``theta^(-2j/head_dim)`` for j < head_dim/2, YaRN-scaled when asked.

    YaRN (MiniMind's variant) only applies when the table is longer than the original
    context: dimensions past the ``beta_slow`` boundary are divided by ``factor``, those
    before ``beta_fast`` are kept, with a linear ramp between. Returns (head_dim/2,) fp32.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    if yarn is None or max_positions <= yarn["original_max_position_embeddings"]:
        return inv_freq
    original = yarn["original_max_position_embeddings"]

    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(yarn["beta_fast"])), 0)
    high = min(math.ceil(correction_dim(yarn["beta_slow"])), head_dim // 2 - 1)
    ramp = torch.clamp((torch.arange(head_dim // 2).float() - low) / max(high - low, 0.001), 0, 1)
    return inv_freq * (1 - ramp + ramp / yarn["factor"])


def rope_tables(
    head_dim: int, theta: float, max_positions: int, yarn: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``cos``, ``sin`` tables, each (max_positions, head_dim) fp32: ``cat(f, f)`` of the angles."""
    inv_freq = rope_frequencies(head_dim, theta, max_positions, yarn)
    angles = torch.outer(torch.arange(max_positions).float(), inv_freq)  # (positions, head_dim/2)
    scale = yarn["attention_factor"] if yarn is not None else 1.0
    cos = torch.cat((angles.cos(), angles.cos()), dim=-1) * scale
    sin = torch.cat((angles.sin(), angles.sin()), dim=-1) * scale
    return cos, sin
