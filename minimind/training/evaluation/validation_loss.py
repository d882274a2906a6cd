"""Validation loss during training: the eval windows dealt to ranks and their forward passes.

Every rank runs the same number of forward passes (ZeRO-3 gathers parameters and AutoEP
exchanges tokens inside each one, so a rank that stopped early would hang the others): eval
batch ``b`` is windows ``[b * world * micro, (b + 1) * world * micro)``, rank ``r`` takes its
``micro`` of them, and slots past the last window are rows of padding with no targets. The
summed token losses and target counts are reduced once, so ``val_loss`` is the mean over every
target token of the eval set, whatever the number of ranks.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from minimind.data.windows import PackedWindows, shifted_sample
from minimind.model.loss import IGNORE_INDEX, token_cross_entropy
from minimind.training.distributed.collectives import all_reduce


@dataclass(frozen=True)
class EvalResult:
    """One evaluation over the eval set (all ranks)."""

    val_loss: float
    eval_tokens: int  # target tokens the loss is averaged over

    @property
    def val_ppl(self) -> float:
        """Perplexity, ``exp(val_loss)`` (inf past the float range)."""
        return math.exp(self.val_loss) if self.val_loss < 700 else math.inf


def eval_batch_count(num_windows: int, micro_batch: int, world: int, max_batches: int) -> int:
    """Forward passes per rank: enough for every window, or ``max_batches`` when that is fewer (0: no cap)."""
    needed = -(-num_windows // (micro_batch * world))
    return min(needed, max_batches) if max_batches else needed


def rank_window_indices(batch: int, micro_batch: int, world: int, rank: int, num_windows: int) -> list[int | None]:
    """The windows rank ``rank`` evaluates in eval batch ``batch``; ``None`` marks a padding row."""
    first = (batch * world + rank) * micro_batch
    return [index if index < num_windows else None for index in range(first, first + micro_batch)]


def stack_rows(windows: PackedWindows, indices: list[int | None]) -> dict[str, torch.Tensor]:
    """``input_ids``/``targets`` (micro_batch, seq) of the given windows; a padding row is a window of no
    token (all padding, no target)."""
    empty = shifted_sample(np.empty(0, dtype=np.int64), windows.max_seq_len, windows.pad_id)
    rows = [windows[index] if index is not None else empty for index in indices]
    return {key: torch.stack([row[key] for row in rows]) for key in ("input_ids", "targets")}


@torch.no_grad()
def evaluate(engine, windows: PackedWindows, *, micro_batch: int, max_batches: int, rank: int, world: int,
             device: torch.device) -> EvalResult:
    """Mean token cross-entropy of ``engine``'s model over ``windows`` (``PackedWindows``), every rank together.

    The model runs in eval mode and is put back in train mode after; the RNG streams are
    forked around the passes, so training after an evaluation is what it would have been
    without. Sums stay on the device until the one all-reduce at the end.
    """
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # summed token loss, target tokens
    fork_devices = [] if device.type == "cpu" else [device.index]
    engine.eval()
    try:
        with torch.random.fork_rng(devices=fork_devices, device_type=device.type):
            for batch in range(eval_batch_count(len(windows), micro_batch, world, max_batches)):
                rows = stack_rows(windows, rank_window_indices(batch, micro_batch, world, rank, len(windows)))
                targets = rows["targets"].to(device, non_blocking=True)
                logits = engine(input_ids=rows["input_ids"].to(device, non_blocking=True)).logits
                totals[0] += token_cross_entropy(logits, targets, reduction="sum")
                totals[1] += (targets != IGNORE_INDEX).sum()
    finally:
        engine.train()
    loss_sum, tokens = all_reduce(totals).tolist()  # the evaluation's one read of the device
    return EvalResult(val_loss=loss_sum / max(tokens, 1.0), eval_tokens=int(tokens))
