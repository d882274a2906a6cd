"""The token loss: cross-entropy of logits against the targets at the same positions.

One function for every caller: the model's ``forward(labels=...)`` (Hugging Face's meaning:
unshifted labels, which it shifts itself) and the training loop (batches that carry
``targets``, already shifted: ``targets[t]`` is the token to predict at position t).
"""

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # a target left out of the loss (padding, masked tokens)


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``logits`` (..., vocab) against ``targets`` (...) at the same positions,
    computed in fp32; ``IGNORE_INDEX`` targets are skipped. ``reduction``: ``mean`` or ``sum``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction=reduction)
