"""Direct preference optimization's loss, as MiniMind's ``train_dpo.py`` (e119db8) computes it.

A sequence's log-probability is the mean of its target tokens' log-probabilities over the loss mask (a mean,
not a sum: MiniMind's issue 298), for the policy and for the frozen reference model. With the batch laid out
as MiniMind lays it (the chosen rows, then the rejected rows, pair i at rows i and i + pairs), the loss is
``-logsigmoid(beta * ((pi_chosen - pi_rejected) - (ref_chosen - ref_rejected)))`` averaged over the pairs.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F

from minimind.model.loss import IGNORE_INDEX


class DPOLoss(NamedTuple):
    """The loss (a scalar, the mean of ``pair_losses``) and, per pair, its loss and the implicit rewards
    ``beta * (policy - reference)`` of the chosen and the rejected answer (detached, for logging)."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor  # (pairs,)
    rejected_rewards: torch.Tensor  # (pairs,)
    pair_losses: torch.Tensor  # (pairs,)


def target_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each position's log-probability of its target (fp32; 0 where the target is IGNORE_INDEX) and the loss mask
    (1.0 where it is not). ``logits``: (batch, seq, vocab); ``targets``: (batch, seq); returns two (batch, seq)."""
    mask = targets != IGNORE_INDEX
    log_probs = F.log_softmax(logits.float(), dim=-1)
    picked = torch.gather(log_probs, dim=-1, index=targets.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask.float()


def sequence_log_probs(token_log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``token_log_probs`` (batch, seq) over ``mask`` (batch, seq) per row, as MiniMind averages (an empty
    mask gives 0); returns (batch,)."""
    lengths = mask.sum(dim=1).clamp_min(1e-8)
    return (token_log_probs * mask).sum(dim=1) / lengths


def dpo_loss(policy_log_probs: torch.Tensor, reference_log_probs: torch.Tensor, mask: torch.Tensor,
             beta: float) -> DPOLoss:
    """MiniMind's DPO loss from per-token log-probabilities of the policy and the reference model and the loss
    mask, all (2 * pairs, seq) with the chosen rows first (``target_log_probs`` gives them); ``beta``:
    MiniMind's ``--beta`` (0.1)."""
    pairs = policy_log_probs.shape[0] // 2
    policy = sequence_log_probs(policy_log_probs, mask)
    reference = sequence_log_probs(reference_log_probs, mask)
    logits = (policy[:pairs] - policy[pairs:]) - (reference[:pairs] - reference[pairs:])
    pair_losses = -F.logsigmoid(beta * logits)
    rewards = (beta * (policy - reference)).detach()
    return DPOLoss(pair_losses.mean(), rewards[:pairs], rewards[pairs:], pair_losses)
