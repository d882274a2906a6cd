"""DPO's objective, as MiniMind's ``train_dpo.py`` computes it, on the DeepSpeed engine.

Each micro-batch is laid out as MiniMind lays it (its chosen rows, then its rejected rows). The frozen
reference model (``--from_weight``'s weights, its own engine under the same ZeRO stage) runs first without
gradients, then the policy; the loss is ``dpo_loss`` of their per-token log-probabilities plus the MoE aux loss,
a mean over the micro-batch's pairs that the engine averages over micro-steps and ranks, as MiniMind's
``loss / accumulation_steps`` under DDP. The stop vote is reduced before the first forward (its copy to the host
waits for nothing else); the step's figures (the summed pair losses, the implicit rewards of both answers, how
many pairs the policy prefers rightly, a tie counting half) stay on the device in one all-reduce after the last
backward.
"""

from dataclasses import dataclass

import torch

from minimind.data.model_inputs import to_device
from minimind.data.preferences import SIDES
from minimind.model.loss import IGNORE_INDEX
from minimind.model.preference_loss import DPOLoss, dpo_loss, target_log_probs
from minimind.training.distributed.collectives import all_reduce
from minimind.training.distributed.world import world_size
from minimind.training.evaluation.validation_loss import EvalResult
from minimind.training.loop.host_copy import copy_to_host_later
from minimind.training.loop.objective import StepResult

# The summed figures of a step or an evaluation, in this order: the aux loss second and the target tokens third,
# where ``StepResult`` reads them.
FIGURES = ("pair_loss", "aux_loss", "target_tokens", "pairs", "chosen_reward", "rejected_reward", "preferred")


@dataclass
class PreferenceStepResult(StepResult):
    """A DPO step's global figures: ``sums`` holds ``FIGURES`` (then the stop vote), over every rank."""

    @property
    def loss(self) -> float:
        """The mean DPO loss over the step's pairs (read from the device)."""
        figures = dict(zip(FIGURES, self.sums.tolist(), strict=True))
        return figures["pair_loss"] / max(figures["pairs"], 1.0)

    @property
    def extra(self) -> dict[str, float]:
        """The mean implicit rewards of the chosen and rejected answers, their margin, and the share of pairs whose
        chosen answer has the higher reward (read from the device)."""
        return reward_figures(dict(zip(FIGURES, self.sums.tolist(), strict=True)), prefix="reward_")


def reward_figures(figures: dict[str, float], prefix: str) -> dict[str, float]:
    """``{prefix}chosen``, ``{prefix}rejected``, ``{prefix}margin`` and ``{prefix}accuracy``: means over the pairs
    (the accuracy counting a tie as half)."""
    pairs = max(figures["pairs"], 1.0)
    chosen, rejected = figures["chosen_reward"] / pairs, figures["rejected_reward"] / pairs
    return {f"{prefix}chosen": chosen, f"{prefix}rejected": rejected, f"{prefix}margin": chosen - rejected,
            f"{prefix}accuracy": figures["preferred"] / pairs}


class PreferenceLoss:
    """DPO against a frozen ``reference`` (an engine, or a module, called without gradients) with ``beta``; a
    sequence's log-probability is its tokens' mean (``mean_over_tokens``, e119db8's) or their sum (today's)."""

    def __init__(self, reference, beta: float, mean_over_tokens: bool = True):
        self.reference = reference
        self.beta = beta
        self.mean_over_tokens = mean_over_tokens

    def pair_losses(self, engine, batch: dict[str, torch.Tensor]) -> tuple[DPOLoss, torch.Tensor, torch.Tensor,
                                                                         torch.Tensor]:
        """The DPO loss of one micro-batch on the device, the policy's aux loss, the pairs that hold targets
        (a blank pair, padding an evaluation's last batch, has none), and the targets (chosen rows, then
        rejected)."""
        input_ids = torch.cat([batch[f"{side}_input_ids"] for side in SIDES])
        targets = torch.cat([batch[f"{side}_targets"] for side in SIDES])
        with torch.no_grad():
            reference_log_probs, _ = target_log_probs(self.reference(input_ids=input_ids).logits, targets)
        output = engine(input_ids=input_ids)
        policy_log_probs, mask = target_log_probs(output.logits, targets)
        result = dpo_loss(policy_log_probs, reference_log_probs, mask, self.beta, self.mean_over_tokens)
        real = mask[:len(result.pair_losses)].sum(dim=1) > 0
        return result, output.aux_loss, real, targets

    def figures(self, result: DPOLoss, aux_loss: torch.Tensor, real: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
        """``FIGURES`` of one micro-batch (float64, on the device), counting its real pairs only; a pair whose two
        rewards tie (policy and reference still alike) counts as half preferred, chance."""
        weight = real.double()
        chosen, rejected = result.chosen_rewards, result.rejected_rewards
        preferred = (chosen > rejected).double() + 0.5 * (chosen == rejected).double()
        return torch.stack([(result.pair_losses.detach().double() * weight).sum(), aux_loss.detach().double(),
                            (targets != IGNORE_INDEX).sum().double(), weight.sum(),
                            (result.chosen_rewards.double() * weight).sum(),
                            (result.rejected_rewards.double() * weight).sum(),
                            (preferred * weight).sum()])

    def train_step(self, engine, micro_batches: list[dict], device: torch.device,
                   stop_requested: bool = False) -> PreferenceStepResult:
        """One optimizer step: the stop vote reduced first, then each micro-batch's ``loss + aux_loss`` through
        ``engine.backward``; the figures in one all-reduce after the last backward."""
        self.reference.eval()
        stopping = copy_to_host_later(all_reduce(torch.full((), float(stop_requested), dtype=torch.float64,
                                                            device=device)))
        sums = torch.zeros(len(FIGURES), dtype=torch.float64, device=device)
        for batch in (to_device(batch, device) for batch in micro_batches):
            result, aux_loss, real, targets = self.pair_losses(engine, batch)
            engine.backward(result.loss + aux_loss)
            engine.step()
            sums = sums + self.figures(result, aux_loss, real, targets)
        return PreferenceStepResult(all_reduce(sums), len(micro_batches) * world_size(), bool(stopping()))

    def eval_sums(self, engine, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``FIGURES`` of one evaluation micro-batch."""
        return self.figures(*self.pair_losses(engine, batch))

    def eval_result(self, sums: list[float]) -> EvalResult:
        """The mean DPO loss over the held-out pairs, and their rewards, margin and preference accuracy."""
        figures = dict(zip(FIGURES, sums, strict=True))
        return EvalResult(val_loss=figures["pair_loss"] / max(figures["pairs"], 1.0),
                          eval_tokens=int(figures["target_tokens"]),
                          extra=reward_figures(figures, prefix="val_reward_"), perplexity=False)
