"""The loop's pieces without an engine: which micro-batches make each optimizer step across
epochs, and when the checkpoint manager saves."""

from minimind.training.ds_config.load import BatchPlan
from minimind.training.loop.steps import LoopSettings, optimizer_steps
from minimind.training.position import TrainingPosition
from tests.recorded_saves import RecordedSaves


def settings(epochs: int, total_steps: int, batch: BatchPlan) -> LoopSettings:
    return LoopSettings(epochs=epochs, total_steps=total_steps, batch=batch, log_interval=1, max_nonfinite_steps=1,
                        flops_per_token=1.0, peak_flops_total=1.0, seq_len=8)


def run_steps(start: TrainingPosition, loop: LoopSettings, micro_batches_per_epoch: int):
    """Drive ``optimizer_steps`` as the loop does; returns the steps' micro-batches and the epoch calls."""
    calls, steps = [], []

    def micro_batches_for_epoch(epoch: int, start_sample: int):
        calls.append((epoch, start_sample))
        first = start_sample // loop.batch.micro_batch
        return iter([(epoch, index) for index in range(first, micro_batches_per_epoch)])

    position = TrainingPosition(**vars(start))
    for micro_batches in optimizer_steps(micro_batches_for_epoch, position, loop):
        steps.append(micro_batches)
        position.advance(loop.batch.global_batch)
    return steps, calls, position


def test_steps_cross_epochs_drop_each_epochs_tail_and_stop_at_total_steps():
    batch = BatchPlan(micro_batch=2, accumulation=3, data_parallel=1, grad_clip=1.0)
    steps, calls, end = run_steps(TrainingPosition(), settings(epochs=3, total_steps=5, batch=batch), 7)
    # 7 micro-batches an epoch make 2 steps of 3; the 7th is dropped
    assert steps == [[(0, 0), (0, 1), (0, 2)], [(0, 3), (0, 4), (0, 5)], [(1, 0), (1, 1), (1, 2)],
                     [(1, 3), (1, 4), (1, 5)], [(2, 0), (2, 1), (2, 2)]]
    assert calls == [(0, 0), (1, 0), (2, 0)]
    assert (end.epoch, end.step, end.sample_in_epoch) == (2, 5, 6)


def test_a_run_stopped_by_max_steps_mid_epoch_stays_in_that_epoch():
    batch = BatchPlan(micro_batch=1, accumulation=2, data_parallel=1, grad_clip=1.0)
    steps, calls, end = run_steps(TrainingPosition(), settings(epochs=2, total_steps=2, batch=batch), 9)
    assert len(steps) == 2 and calls == [(0, 0)]
    assert (end.epoch, end.step, end.sample_in_epoch) == (0, 2, 4)


def test_a_resume_mid_epoch_continues_from_its_sample():
    batch = BatchPlan(micro_batch=2, accumulation=1, data_parallel=1, grad_clip=1.0)
    start = TrainingPosition(epoch=1, step=5, sample_in_epoch=4)
    steps, calls, end = run_steps(start, settings(epochs=2, total_steps=8, batch=batch), 5)
    assert calls == [(1, 4)] and steps == [[(1, 2)], [(1, 3)], [(1, 4)]]
    assert (end.epoch, end.step, end.sample_in_epoch) == (1, 8, 10)


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
