"""The DPO loss equals e119db8's ``dpo_loss`` on the same inputs, in fp32, bit for bit (fixture from upstream's
own ``train_dpo.py``), and today's (d65ef2c: sequences summed, not averaged) with ``mean=False``; its rewards
are the implicit ones."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from minimind.model.loss import IGNORE_INDEX
from minimind.model.preference_loss import dpo_loss, sequence_log_probs, target_log_probs

FIXTURE = load_file(str(Path(__file__).resolve().parent / "upstream" / "dpo_loss.safetensors"))
BETA = FIXTURE["beta"].item()


def project_inputs() -> tuple[torch.Tensor, ...]:
    """The fixture's inputs in the project's form: targets with IGNORE_INDEX where MiniMind's mask is 0."""
    targets = FIXTURE["y"].masked_fill(FIXTURE["mask"] == 0, IGNORE_INDEX)
    policy, mask = target_log_probs(FIXTURE["policy_logits"], targets)
    reference, _ = target_log_probs(FIXTURE["reference_logits"], targets)
    return policy, reference, mask


def test_loss_is_minimind_e119db8s_exactly():
    policy, reference, mask = project_inputs()
    assert FIXTURE["mask"][-1].sum() == 0  # a row with no target token, as MiniMind's clamp allows
    assert torch.equal(dpo_loss(policy, reference, mask, BETA).loss, FIXTURE["loss"])


def test_loss_with_summed_sequences_is_minimind_d65ef2cs():
    policy, reference, mask = project_inputs()
    torch.testing.assert_close(dpo_loss(policy, reference, mask, BETA, mean=False).loss, FIXTURE["loss_minimind3"],
                               rtol=1e-6, atol=0)
    assert not torch.allclose(FIXTURE["loss_minimind3"], FIXTURE["loss"])  # the two versions differ here


def test_sequence_log_probs_are_means_over_the_mask():
    policy, _, mask = project_inputs()
    log_probs = F.log_softmax(FIXTURE["policy_logits"].double(), -1).gather(-1, FIXTURE["y"][..., None])[..., 0]
    means = [log_probs[row][mask[row].bool()].mean().item() if mask[row].any() else 0.0 for row in range(len(mask))]
    torch.testing.assert_close(sequence_log_probs(policy, mask).double(), torch.tensor(means, dtype=torch.float64),
                               rtol=1e-6, atol=1e-6)  # fp32 against fp64


def test_rewards_are_beta_times_the_log_ratio_and_detached():
    policy, reference, mask = project_inputs()
    policy.requires_grad_(True)
    result = dpo_loss(policy, reference, mask, BETA)
    pairs = len(mask) // 2
    ratio = sequence_log_probs(policy, mask) - sequence_log_probs(reference, mask)
    assert torch.equal(result.chosen_rewards, (BETA * ratio[:pairs]).detach())
    assert torch.equal(result.rejected_rewards, (BETA * ratio[pairs:]).detach())
    assert not result.chosen_rewards.requires_grad and result.loss.requires_grad
    expected = -F.logsigmoid(result.chosen_rewards - result.rejected_rewards).mean()
    torch.testing.assert_close(result.loss, expected, rtol=1e-6, atol=1e-6)  # fp32, beta applied in another order


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits_give_fp32_log_probs(dtype):
    targets = FIXTURE["y"].masked_fill(FIXTURE["mask"] == 0, IGNORE_INDEX)
    log_probs, mask = target_log_probs(FIXTURE["policy_logits"].to(dtype), targets)
    assert log_probs.dtype == mask.dtype == torch.float32
    assert (log_probs[mask == 0] == 0).all()
