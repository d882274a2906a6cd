"""The loop's pieces without an engine: which micro-batches make each optimizer step across
epochs (the data object's ``optimizer_steps``, driven as the loop drives it), and when the checkpoint
manager saves."""

import torch
from torch.utils.data import Dataset

from minimind.data.pipeline import DataSettings, training_data
from minimind.training.position import TrainingPosition
from tests.recorded_saves import RecordedSaves


class NumberedSamples(Dataset):
    """Sample ``i`` is the token ``i``: a micro-batch names the samples it holds."""

    def __init__(self, count: int):
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        token = torch.tensor([index])
        return {"input_ids": token, "targets": token}


def settings(seed: int) -> DataSettings:
    return DataSettings(sources=(), max_seq_len=1, packing=True, eval_fraction=None, eval_data_path=None,
                        skip_bad_lines=False, text_field="text", mixture_exhaust="stop", seed=seed, tokenize_workers=1)


def run_steps(samples: int, micro_batch: int, accumulation: int, epochs: int, max_steps: int | None,
              start: TrainingPosition, world: int = 1, rank: int = 0, seed: int = 3):
    """Drive ``TrainingData.optimizer_steps`` as ``run_training`` does; returns each step's (epoch, sample
    numbers of its micro-batches), the end position and the epochs the sampler was set to."""
    data = training_data(NumberedSamples(samples), settings(seed), micro_batch, accumulation, world, rank, epochs,
                         max_steps, pin_memory=False, log=lambda line: None)
    dealt = []
    set_epoch = data.sampler.set_epoch
    data.sampler.set_epoch = lambda epoch, start_sample=0: (dealt.append((epoch, start_sample)),
                                                            set_epoch(epoch, start_sample))
    position = TrainingPosition(**vars(start))
    steps = []
    source = data.optimizer_steps(position.epoch, position.sample_in_epoch)
    while position.step < data.total_steps and (step := next(source, None)) is not None:
        epoch, micro_batches = step
        position.begin_epoch(epoch)
        steps.append((epoch, [batch["input_ids"].flatten().tolist() for batch in micro_batches]))
        position.advance(micro_batch * accumulation * world)
    return steps, position, dealt, data.total_steps


def permutation(samples: int, seed: int, epoch: int) -> list[int]:
    """The sampler's documented order of an epoch: one permutation from ``seed + epoch``."""
    return torch.randperm(samples, generator=torch.Generator().manual_seed(seed + epoch)).tolist()


def test_steps_cross_epochs_drop_each_epochs_tail_and_stop_at_total_steps():
    # 15 samples, 2 x 3 per step: 2 steps an epoch, 3 samples of each epoch dropped; 3 epochs cut at 5 steps
    steps, end, dealt, total = run_steps(15, micro_batch=2, accumulation=3, epochs=3, max_steps=5,
                                         start=TrainingPosition())
    expected = []
    for epoch in range(3):
        order = permutation(15, 3, epoch)
        expected += [(epoch, [order[s * 6 + j * 2: s * 6 + j * 2 + 2] for j in range(3)]) for s in range(2)]
    assert total == 5 and steps == expected[:5]
    assert dealt == [(0, 0), (1, 0), (2, 0)]
    assert (end.epoch, end.step, end.sample_in_epoch) == (2, 5, 6)


def test_a_run_ending_on_an_epochs_last_step_deals_no_further_epoch():
    steps, end, dealt, total = run_steps(9, micro_batch=1, accumulation=2, epochs=3, max_steps=4,
                                         start=TrainingPosition())
    assert total == 4 and len(steps) == 4 and dealt == [(0, 0)]  # 4 steps an epoch: epoch 1 is never dealt
    assert (end.epoch, end.step, end.sample_in_epoch) == (0, 4, 8)


def test_a_run_stopped_by_max_steps_mid_epoch_stays_in_that_epoch():
    steps, end, dealt, _ = run_steps(9, micro_batch=1, accumulation=2, epochs=2, max_steps=2,
                                     start=TrainingPosition())
    assert len(steps) == 2 and dealt == [(0, 0)]
    assert (end.epoch, end.step, end.sample_in_epoch) == (0, 2, 4)


def test_a_resume_mid_epoch_continues_as_the_uninterrupted_run():
    whole, whole_end, _, _ = run_steps(11, micro_batch=2, accumulation=1, epochs=2, max_steps=None,
                                       start=TrainingPosition())
    assert len(whole) == 10  # 5 steps an epoch, one sample dropped from each
    start = TrainingPosition(epoch=1, step=7, sample_in_epoch=4)
    resumed, end, dealt, _ = run_steps(11, micro_batch=2, accumulation=1, epochs=2, max_steps=None, start=start)
    assert dealt == [(1, 4)] and resumed == whole[7:]
    assert (end.epoch, end.step, end.sample_in_epoch) == (whole_end.epoch, 10, 10) == (1, 10, 10)


def test_each_rank_gets_its_share_of_the_single_process_steps():
    single, _, _, _ = run_steps(13, micro_batch=4, accumulation=2, epochs=2, max_steps=None,
                                start=TrainingPosition())
    ranks = [run_steps(13, micro_batch=2, accumulation=2, epochs=2, max_steps=None, start=TrainingPosition(),
                       world=2, rank=rank)[0] for rank in range(2)]
    for step, (epoch, micro_batches) in enumerate(single):
        for micro, samples in enumerate(micro_batches):
            shares = [ranks[rank][step][1][micro] for rank in range(2)]
            assert ranks[0][step][0] == epoch and sorted(shares[0] + shares[1]) == sorted(samples)


def test_checkpoints_are_saved_on_the_interval_and_once_at_the_end():
    saves = RecordedSaves(interval=4)
    position = TrainingPosition()
    for _ in range(9):
        position.advance(8)
        saves.after_step(position)
    saves.close(position)
    saves.close(position)
    assert saves.steps == [4, 8, 9]
    resumed = RecordedSaves(interval=4, saved_step=9)
    resumed.close(position)  # a resumed run that trained no step writes nothing
    assert resumed.steps == []


def test_a_resumed_position_moves_to_the_next_micro_step_of_another_global_batch():
    position = TrainingPosition(epoch=2, step=7, sample_in_epoch=28)  # 7 steps of 4 samples
    assert position.align(samples_per_micro_step=4, samples_per_epoch=96) == 0 and position.sample_in_epoch == 28
    assert position.align(samples_per_micro_step=6, samples_per_epoch=96) == 2 and position.sample_in_epoch == 30
    late = TrainingPosition(epoch=2, step=23, sample_in_epoch=92)
    assert late.align(samples_per_micro_step=10, samples_per_epoch=90) == 0  # past the new epoch's last full step
    assert (late.epoch, late.sample_in_epoch, late.step) == (3, 0, 23)
    edge = TrainingPosition(epoch=0, step=3, sample_in_epoch=87)
    assert edge.align(samples_per_micro_step=10, samples_per_epoch=90) == 3 and (edge.epoch, edge.sample_in_epoch) == (
        0, 90)
