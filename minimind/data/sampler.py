"""Deal each epoch's shuffled samples to data-parallel ranks so that no step depends on the rank count."""

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import Sampler

from minimind.data.jsonl_reader import DataError


class RankInvariantSampler(Sampler[int]):
    """One rank's sample indices for an epoch; every optimizer step trains on the same samples
    whatever the number of ranks, as long as the global batch size is the same.

    Epoch e draws one permutation ``perm`` of ``range(num_samples)`` from a ``torch.Generator``
    seeded with ``seed + e``. With m = micro_batch_size, a = accumulation_steps, w = world_size
    and G = m * a * w, optimizer step s trains on ``perm[s * G : (s + 1) * G]``; its micro-step j
    is the run of m * w indices starting at ``s * G + j * m * w``, which is dealt like
    ``DistributedSampler``: rank r takes ``perm[base + r + i * w]`` for i in range(m). So 1 rank
    with micro-batch 4 and 2 ranks with micro-batch 2 train on the same samples in every step
    (and every micro-step), with or without accumulation.

    The ``num_samples % G`` samples at the end of the permutation, fewer than one global batch,
    are dropped for that epoch (a different few each epoch); the ranks together see every other
    sample exactly once. ``set_epoch(epoch, start_sample)`` resumes part-way through an epoch
    without touching the data.
    """

    def __init__(self, num_samples: int, *, micro_batch_size: int, accumulation_steps: int = 1,
                 world_size: int = 1, rank: int = 0, seed: int = 0):
        if min(micro_batch_size, accumulation_steps, world_size) < 1:
            raise ValueError("micro_batch_size, accumulation_steps and world_size must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.num_samples = num_samples
        self.micro_batch_size = micro_batch_size
        self.accumulation_steps = accumulation_steps
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.global_batch_size = micro_batch_size * accumulation_steps * world_size
        check_fills_one_global_batch(num_samples, self.global_batch_size,
                                     f"the samples (micro_batch_size {micro_batch_size} x accumulation_steps "
                                     f"{accumulation_steps} x world_size {world_size})")
        self.steps_per_epoch = num_samples // self.global_batch_size
        self.samples_per_epoch = self.steps_per_epoch * self.global_batch_size
        self.epoch = 0
        self.start_sample = 0

    def set_epoch(self, epoch: int, start_sample: int = 0) -> None:
        """Deal epoch ``epoch`` from global sample ``start_sample`` on (the samples all ranks have
        already trained on in this epoch, e.g. steps_done * global_batch_size when resuming).

        ``start_sample`` must fall on a micro-step boundary, a multiple of micro_batch_size * world_size.
        """
        samples_per_micro_step = self.micro_batch_size * self.world_size
        if start_sample % samples_per_micro_step or not 0 <= start_sample <= self.samples_per_epoch:
            raise ValueError(f"start_sample {start_sample} is not a multiple of {samples_per_micro_step} "
                             f"within the epoch's {self.samples_per_epoch} samples")
        self.epoch = epoch
        self.start_sample = start_sample

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        permutation = torch.randperm(self.num_samples, generator=generator)
        used = permutation[:self.samples_per_epoch]
        # (micro-steps, micro_batch_size, world_size): [c, i, r] = perm[c * m * w + i * w + r]
        mine = used.view(-1, self.micro_batch_size, self.world_size)[:, :, self.rank]
        first_micro_step = self.start_sample // (self.micro_batch_size * self.world_size)
        return iter(mine[first_micro_step:].reshape(-1).tolist())

    def __len__(self) -> int:
        micro_steps = self.steps_per_epoch * self.accumulation_steps
        done = self.start_sample // (self.micro_batch_size * self.world_size)
        return (micro_steps - done) * self.micro_batch_size


def check_fills_one_global_batch(num_samples: int, global_batch: int, source: str | Path) -> None:
    """Raise ``DataError`` naming ``source`` when its ``num_samples`` do not fill one global batch
    (the sampler would have no step to deal)."""
    if num_samples < global_batch:
        raise DataError(source, None, f"{num_samples} samples do not fill one global batch of {global_batch}")
