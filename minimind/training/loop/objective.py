"""What one optimizer step optimises, and what an evaluation measures: an objective.

The token loss (pretraining and SFT) normalises every micro-batch's summed token loss by the number of target
tokens in the whole optimizer step (all ranks, all micro-steps), so the step's loss is exactly what one
process holding the global batch would compute, however the batch is split. DPO's objective is
``loop.preference_objective``'s.
"""

from dataclasses import dataclass
from typing import Protocol

import torch

from minimind.data.model_inputs import model_inputs, to_device
from minimind.model.loss import IGNORE_INDEX, token_cross_entropy
from minimind.training.distributed.collectives import all_reduce
from minimind.training.distributed.world import world_size
from minimind.training.evaluation.validation_loss import EvalObjective, EvalResult
from minimind.training.loop.host_copy import copy_to_host_later


@dataclass
class StepResult:
    """The global numbers of one optimizer step, left on the accelerator until a property reads them."""

    sums: torch.Tensor  # (3,) float64 over every rank: summed token loss, summed aux loss, target tokens
    aux_terms: int  # micro-batches x ranks: the aux loss reported is the mean over them
    stop: bool = False

    @property
    def extra(self) -> dict[str, float]:
        """The step's figures besides the loss, by name (none for the token loss; read from the device)."""
        return {}

    @property
    def target_count(self) -> torch.Tensor:
        """The step's target tokens over every rank, as a tensor still on the accelerator."""
        return self.sums[2]

    @property
    def target_tokens(self) -> int:
        """The step's target tokens over every rank (read from the device)."""
        return int(self.sums[2])

    @property
    def loss(self) -> float:
        """Mean token cross-entropy of the step over all its target tokens (read from the device)."""
        loss_sum, _, targets = self.sums.tolist()
        return loss_sum / max(targets, 1.0)

    @property
    def aux_loss(self) -> float:
        """MoE auxiliary loss, the mean over micro-batches and ranks (read from the device)."""
        return float(self.sums[1]) / self.aux_terms


def train_step(engine, micro_batches: list[dict], device: torch.device, stop_requested: bool = False,
               packed_attention: str = "auto") -> StepResult:
    """One optimizer step over this rank's ``micro_batches`` (each ``input_ids``/``targets`` (batch, seq), and
    ``position_ids``/``segment_ids`` where samples are packed conversations, which attend as ``packed_attention``
    says).

    Nothing inside the step waits for the accelerator: token counts, losses and the stop vote
    stay on the device, in two all-reduces (counts before the first forward, losses after the
    last backward); only the stop vote is copied back, without draining the queue.
    ``stop_requested`` (this rank got a signal) rides on the first collective;
    ``StepResult.stop`` is True on every rank when any rank asked.
    """
    accumulation = len(micro_batches)
    world = world_size()
    batches = [to_device(batch, device) for batch in micro_batches]
    local_targets = sum((batch["targets"] != IGNORE_INDEX).sum() for batch in batches).to(torch.float64)
    stop_vote = torch.full((), float(stop_requested), dtype=torch.float64, device=device)
    counts = all_reduce(torch.stack([local_targets, stop_vote]))  # (targets, stop votes)
    stopping = copy_to_host_later(counts[1])
    # engine.backward divides by accumulation and gradients are averaged over ranks:
    # scaling by accumulation * world / global_targets leaves sum(token losses) / global_targets.
    scale = (accumulation * world / counts[0].clamp(min=1.0)).float()
    loss_sum = aux_sum = torch.zeros((), dtype=torch.float64, device=device)
    for batch in batches:
        output = engine(**model_inputs(batch, packed_attention=packed_attention))
        token_loss = token_cross_entropy(output.logits, batch["targets"], reduction="sum")
        engine.backward(token_loss * scale + output.aux_loss)
        engine.step()
        loss_sum = loss_sum + token_loss.detach()
        aux_sum = aux_sum + output.aux_loss.detach()
    sums = all_reduce(torch.stack([loss_sum, aux_sum, local_targets]))
    return StepResult(sums, accumulation * world, bool(stopping()))


class Objective(EvalObjective, Protocol):
    """A stage's loss: one optimizer step of the engine, and (``EvalObjective``) what an evaluation measures."""

    def train_step(self, engine, micro_batches: list[dict], device: torch.device,
                   stop_requested: bool = False) -> StepResult:
        """One optimizer step over this rank's ``micro_batches``; ``stop_requested`` rides on its first collective."""


class TokenLoss:
    """Pretraining's and SFT's objective: mean cross-entropy over every target token (``train_step``); packed
    conversations attend as ``packed_attention`` says (``minimind.model.packed_attention``)."""

    def __init__(self, packed_attention: str = "auto"):
        self.packed_attention = packed_attention

    def train_step(self, engine, micro_batches: list[dict], device: torch.device,
                   stop_requested: bool = False) -> StepResult:
        """One optimizer step of the token loss over this rank's ``micro_batches`` (``train_step``)."""
        return train_step(engine, micro_batches, device, stop_requested, self.packed_attention)

    def eval_sums(self, engine, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(summed token loss, target tokens)."""
        logits = engine(**model_inputs(batch, packed_attention=self.packed_attention)).logits
        targets = batch["targets"]
        return torch.stack([token_cross_entropy(logits, targets, reduction="sum").double(),
                            (targets != IGNORE_INDEX).sum().double()])

    def eval_result(self, sums: list[float]) -> EvalResult:
        """The mean token loss over the evaluation's target tokens."""
        loss_sum, tokens = sums
        return EvalResult(val_loss=loss_sum / max(tokens, 1.0), eval_tokens=int(tokens))


TOKEN_LOSS = TokenLoss()
