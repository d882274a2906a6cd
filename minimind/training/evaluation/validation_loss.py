"""Validation during training: the eval samples dealt to ranks and their forward passes.

Every rank runs the same number of forward passes (ZeRO-3 gathers parameters and AutoEP
exchanges tokens inside each one, so a rank that stopped early would hang the others): eval
batch ``b`` is samples ``[b * world * micro, (b + 1) * world * micro)``, rank ``r`` takes its
``micro`` of them, and slots past the last sample are the dataset's ``blank()``, with no targets. The
objective's sums (token losses and target counts; DPO's pair figures) are reduced once, so ``val_loss`` is
the mean over every target of the eval set, whatever the number of ranks.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch.utils.data import Dataset

from minimind.data.model_inputs import to_device
from minimind.training.distributed.collectives import all_reduce


@dataclass(frozen=True)
class EvalResult:
    """One evaluation over the eval set (all ranks)."""

    val_loss: float
    eval_tokens: int  # target tokens the loss is averaged over
    extra: Mapping[str, float] = field(default_factory=dict)  # the stage's own figures (DPO's accuracy, margin)
    perplexity: bool = True  # val_loss is a token loss, whose exp is a perplexity

    @property
    def val_ppl(self) -> float:
        """Perplexity, ``exp(val_loss)`` (inf past the float range)."""
        return math.exp(self.val_loss) if self.val_loss < 700 else math.inf

    def figures(self) -> dict[str, float]:
        """Every figure by name: ``val_loss``, ``val_ppl`` (a token loss), ``eval_tokens`` and the extra ones."""
        return {"val_loss": self.val_loss, **({"val_ppl": self.val_ppl} if self.perplexity else {}),
                "eval_tokens": self.eval_tokens, **self.extra}


class EvalObjective(Protocol):
    """What an evaluation sums per micro-batch and makes of the sums (``loop.objective.Objective``)."""

    def eval_sums(self, engine, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed figures (float64, on the device) of one micro-batch already on the device."""

    def eval_result(self, sums: list[float]) -> EvalResult:
        """The result from the sums over every batch and rank."""


def eval_batch_count(num_samples: int, micro_batch: int, world: int, max_batches: int) -> int:
    """Forward passes per rank: enough for every sample, or ``max_batches`` when that is fewer (0: no cap)."""
    needed = -(-num_samples // (micro_batch * world))
    return min(needed, max_batches) if max_batches else needed


def rank_sample_indices(batch: int, micro_batch: int, world: int, rank: int, num_samples: int) -> list[int | None]:
    """The samples rank ``rank`` evaluates in eval batch ``batch``; ``None`` marks a padding row."""
    first = (batch * world + rank) * micro_batch
    return [index if index < num_samples else None for index in range(first, first + micro_batch)]


def stack_rows(samples: Dataset, indices: list[int | None]) -> dict[str, torch.Tensor]:
    """Every tensor of the given samples stacked (micro_batch, ...); a ``None`` slot is ``samples.blank()`` (all
    padding, no target)."""
    rows = [samples[index] if index is not None else samples.blank() for index in indices]
    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}


@torch.no_grad()
def evaluate(engine, samples: Dataset, objective: EvalObjective, *, micro_batch: int, max_batches: int, rank: int,
             world: int, device: torch.device) -> EvalResult:
    """``objective``'s evaluation of ``engine``'s model over ``samples`` (with ``blank()``: ``PackedWindows``,
    conversations, preference pairs), every rank together.

    The model runs in eval mode and is put back in train mode after; the RNG streams are
    forked around the passes, so training after an evaluation is what it would have been
    without. Sums stay on the device until the one all-reduce at the end.
    """
    totals = None
    fork_devices = [] if device.type == "cpu" else [device.index]
    engine.eval()
    try:
        with torch.random.fork_rng(devices=fork_devices, device_type=device.type):
            for batch in range(eval_batch_count(len(samples), micro_batch, world, max_batches)):
                rows = stack_rows(samples, rank_sample_indices(batch, micro_batch, world, rank, len(samples)))
                sums = objective.eval_sums(engine, to_device(rows, device))
                totals = sums if totals is None else totals + sums
    finally:
        engine.train()
    return objective.eval_result(all_reduce(totals).tolist())  # the evaluation's one read of the device
