"""Dealing packed windows to simulated data-parallel ranks: coverage, disjointness, rank-count
invariance of each optimizer step, resumption and seeding."""

import numpy as np
import pytest
import torch

from minimind.data import IGNORE_INDEX, PackedWindows, RankInvariantSampler, make_data_loader

MAX_SEQ_LEN = 16
NUM_TOKENS = 400  # 24 windows of 17 tokens, the last one partial (9 tokens)


def rank_streams(num_samples: int, *, world_size: int, micro: int, accumulation: int = 1, seed: int = 0,
                 epoch: int = 0, start_sample: int = 0) -> list[list[int]]:
    """Each rank's index stream for one epoch."""
    streams = []
    for rank in range(world_size):
        sampler = RankInvariantSampler(num_samples, micro_batch_size=micro, accumulation_steps=accumulation,
                                       world_size=world_size, rank=rank, seed=seed)
        sampler.set_epoch(epoch, start_sample)
        streams.append(list(sampler))
        assert len(sampler) == len(streams[-1])
    return streams


def step_sets(streams: list[list[int]], *, micro: int, accumulation: int) -> list[set[int]]:
    """The set of samples each optimizer step trains on, over all ranks and micro-steps."""
    per_step = micro * accumulation
    steps = len(streams[0]) // per_step
    return [{index for stream in streams for index in stream[step * per_step:(step + 1) * per_step]}
            for step in range(steps)]


def window_tokens(sample: dict[str, torch.Tensor]) -> list[int]:
    """The real tokens of a window: its first input plus every unmasked label."""
    real_labels = sample["targets"][sample["targets"] != IGNORE_INDEX]
    return [int(sample["input_ids"][0])] + real_labels.tolist()


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("micro,accumulation", [(1, 2), (2, 1)])
def test_ranks_cover_every_token_once_per_epoch(world_size, micro, accumulation):
    tokens = np.arange(1, NUM_TOKENS + 1, dtype=np.uint16)
    windows = PackedWindows(tokens, MAX_SEQ_LEN)
    assert len(windows) == 24  # divisible by every global batch size here, so nothing is dropped
    seen = []
    for rank in range(world_size):
        sampler = RankInvariantSampler(len(windows), micro_batch_size=micro, accumulation_steps=accumulation,
                                       world_size=world_size, rank=rank, seed=3)
        sampler.set_epoch(1)
        rank_windows = []
        for batch in make_data_loader(windows, sampler):
            assert batch["input_ids"].shape == batch["targets"].shape == (micro, MAX_SEQ_LEN)
            rank_windows += [{"input_ids": batch["input_ids"][i], "targets": batch["targets"][i]}
                             for i in range(micro)]
        seen.append([tuple(window_tokens(window)) for window in rank_windows])
    first_tokens = [window[0] for rank_windows in seen for window in rank_windows]
    assert len(first_tokens) == len(set(first_tokens)) == 24  # ranks disjoint, no window twice
    all_tokens = sorted(token for rank_windows in seen for window in rank_windows for token in window)
    assert all_tokens == tokens.tolist()


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_dropped_tail_is_smaller_than_a_global_batch(world_size):
    streams = rank_streams(103, world_size=world_size, micro=3, accumulation=2, seed=5)
    dealt = [index for stream in streams for index in stream]
    global_batch = 3 * 2 * world_size
    assert len(dealt) == len(set(dealt)) == 103 - 103 % global_batch
    assert set(dealt) <= set(range(103))


@pytest.mark.parametrize("layouts", [
    [(1, 4, 1), (2, 2, 1), (4, 1, 1)],  # (world_size, micro, accumulation): global batch 4
    [(1, 4, 2), (2, 2, 2), (4, 1, 2), (2, 1, 4), (1, 8, 1)],  # global batch 8
    [(1, 6, 1), (3, 2, 1), (2, 3, 1), (3, 1, 2)],  # global batch 6, uneven rank counts
])
def test_each_step_trains_on_the_same_windows_whatever_the_rank_count(layouts):
    reference = None
    for world_size, micro, accumulation in layouts:
        streams = rank_streams(50, world_size=world_size, micro=micro, accumulation=accumulation, seed=11)
        steps = step_sets(streams, micro=micro, accumulation=accumulation)
        if reference is None:
            reference = steps
        assert steps == reference, (world_size, micro, accumulation)


def test_same_micro_step_windows_when_micro_times_world_matches():
    one_rank = rank_streams(40, world_size=1, micro=4, accumulation=2)[0]
    two_ranks = rank_streams(40, world_size=2, micro=2, accumulation=2)
    for micro_step in range(len(one_rank) // 4):
        expected = set(one_rank[micro_step * 4:(micro_step + 1) * 4])
        dealt = {index for stream in two_ranks for index in stream[micro_step * 2:(micro_step + 1) * 2]}
        assert dealt == expected


@pytest.mark.parametrize("world_size,micro,accumulation", [(1, 1, 1), (1, 4, 2), (2, 2, 2), (3, 2, 1)])
def test_resuming_at_a_sample_skips_exactly_that_many(world_size, micro, accumulation):
    full = rank_streams(60, world_size=world_size, micro=micro, accumulation=accumulation, epoch=2)
    per_micro_step = micro * world_size
    for start in range(0, len(full[0]) * world_size + 1, per_micro_step):
        resumed = rank_streams(60, world_size=world_size, micro=micro, accumulation=accumulation, epoch=2,
                               start_sample=start)
        assert resumed == [stream[start // world_size:] for stream in full]


def test_resume_point_must_be_a_micro_step_boundary():
    sampler = RankInvariantSampler(60, micro_batch_size=2, world_size=2)
    for bad in (1, 3, -4, 64):
        with pytest.raises(ValueError):
            sampler.set_epoch(0, bad)


def test_epochs_differ_and_seeds_repeat():
    epoch0 = rank_streams(64, world_size=2, micro=2, seed=7, epoch=0)
    assert epoch0 == rank_streams(64, world_size=2, micro=2, seed=7, epoch=0)
    assert epoch0 != rank_streams(64, world_size=2, micro=2, seed=7, epoch=1)
    assert epoch0 != rank_streams(64, world_size=2, micro=2, seed=8, epoch=0)
    assert sorted(sum(epoch0, [])) == sorted(sum(rank_streams(64, world_size=2, micro=2, seed=7, epoch=1), []))


def test_dealing_matches_distributed_sampler_within_a_micro_step():
    permutation = torch.randperm(24, generator=torch.Generator().manual_seed(0)).tolist()
    streams = rank_streams(24, world_size=3, micro=2, seed=0)
    for rank in range(3):
        assert streams[rank][:2] == permutation[rank:6:3]


def test_too_few_samples_for_one_global_batch():
    with pytest.raises(ValueError, match="do not fill one global batch"):
        RankInvariantSampler(7, micro_batch_size=2, accumulation_steps=2, world_size=2)
    with pytest.raises(ValueError):
        RankInvariantSampler(8, micro_batch_size=1, world_size=2, rank=2)
