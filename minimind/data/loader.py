"""The per-rank DataLoader: a dataset of samples, dealt by a RankInvariantSampler, stacked into micro-batches."""

from torch.utils.data import DataLoader, Dataset

from minimind.data.sampler import RankInvariantSampler


def make_data_loader(dataset: Dataset, sampler: RankInvariantSampler, *, num_workers: int = 0,
                     pin_memory: bool = False) -> DataLoader:
    """Return a loader over this rank's micro-batches, in the sampler's order.

    Each batch is ``{"input_ids": (micro_batch_size, L), "targets": (micro_batch_size, L)}``, int64.
    Reading a sample is a slice of a memory-mapped array, so ``num_workers=0`` is usually enough.
    Workers share the memory map when forked (Linux); a spawned worker gets a pickled copy of it. They are
    started anew for each epoch (not persistent): a worker holds its own copy of the dataset, and a mixture's
    samples follow the epoch set on the main process's copy.
    """
    return DataLoader(dataset, batch_size=sampler.micro_batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory)
