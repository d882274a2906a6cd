"""Direct preference optimization's loss, as MiniMind's ``train_dpo.py`` computes it in each version.

A sequence's log-probability is its target tokens' log-probabilities over the loss mask, for the policy and for
the frozen reference model: their mean in e119db8's trainer (the minimind2 family; MiniMind's issue 298), their
sum in today's (minimind3), as the DPO paper has it. With the batch laid out
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


def sequence_log_probs(token_log_probs: torch.Tensor, mask: torch.Tensor, mean: bool = True) -> torch.Tensor:
    """Mean (``mean``, e119db8's) or sum (today's) of ``token_log_probs`` (batch, seq) over ``mask`` (batch, seq)
    per row (an empty mask gives 0); returns (batch,)."""
    summed = (token_log_probs * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp_min(1e-8) if mean else summed


def dpo_loss(policy_log_probs: torch.Tensor, reference_log_probs: torch.Tensor, mask: torch.Tensor,
             beta: float, mean: bool = True) -> DPOLoss:
    """MiniMind's DPO loss from per-token log-probabilities of the policy and the reference model and the loss
    mask, all (2 * pairs, seq) with the chosen rows first (``target_log_probs`` gives them); ``beta``:
    MiniMind's ``--beta`` (0.1 in e119db8, 0.15 today); ``mean``: a sequence's log-probability is its tokens'
    mean (e119db8's), else their sum (today's)."""
    pairs = policy_log_probs.shape[0] // 2
    policy = sequence_log_probs(policy_log_probs, mask, mean)
    reference = sequence_log_probs(reference_log_probs, mask, mean)
    logits = (policy[:pairs] - policy[pairs:]) - (reference[:pairs] - reference[pairs:])
    pair_losses = -F.logsigmoid(beta * logits)
    rewards = (beta * (policy - reference)).detach()
    return DPOLoss(pair_losses.mean(), rewards[:pairs], rewards[pairs:], pair_losses)
