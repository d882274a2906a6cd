"""How ``run_training`` ends, with an engine stand-in (no DeepSpeed, one process): at the last step,
on a signal, and after too many non-finite steps in a row; each with exactly the saves it owes."""

import pytest
import torch

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.training.ds_config.load import BatchPlan
from minimind.training.loop.steps import LoopSettings, NonFiniteStepsError, run_training
from minimind.training.position import TrainingPosition
from tests.plain_engine import PlainEngine
from tests.recorded_saves import RecordedSaves


class SkippingEngine(PlainEngine):
    """The engine calls the loop makes, on a tiny model; optimizer steps from ``skip_from`` on are
    skipped as DeepSpeed skips a step with non-finite gradients (``skipped_steps`` counts them)."""

    def __init__(self, skip_from: int | None = None):
        super().__init__(MiniMindForCausalLM(MiniMindConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                            num_key_value_heads=2, vocab_size=64)))
        self.skip_from = skip_from
        self.steps = 0
        self.skipped_steps = 0
        self.optimizer = None

    def step(self):
        self.steps += 1
        if self.skip_from is not None and self.steps >= self.skip_from:
            self.skipped_steps += 1

    def train(self):
        self.model.train()

    def get_lr(self):
        return [1e-3]

    def get_global_grad_norm(self):
        return 1.0

    def fp16_enabled(self):
        return False


class RandomSteps:
    """The loop's ``StepSource`` for a stand-in engine: ``total_steps``, and one micro-batch per step of seeded
    random tokens (``rows`` rows, ``seq`` inputs each, ids in [3, ``vocab``)), drawn anew for each epoch."""

    def __init__(self, total_steps: int, rows: int, seq: int, vocab: int):
        self.total_steps, self.rows, self.seq, self.vocab = total_steps, rows, seq, vocab

    def optimizer_steps(self, epoch: int, sample_in_epoch: int):
        generator = torch.Generator().manual_seed(epoch)
        for _ in range(100):
            tokens = torch.randint(3, self.vocab, (self.rows, self.seq + 1), generator=generator)
            yield epoch, [{"input_ids": tokens[:, :-1], "targets": tokens[:, 1:]}]


class QuietLogger:
    def start_progress(self, total_steps, start_step):
        pass

    def advance(self):
        pass

    def log(self, metrics):
        pass


class StopAfter:
    """A signal recorded once ``engine`` has taken ``steps`` optimizer steps."""

    def __init__(self, engine: SkippingEngine, steps: int):
        self.engine, self.steps = engine, steps

    @property
    def requested(self) -> bool:
        return self.engine.steps >= self.steps


def train(engine, total_steps: int, interval: int, max_nonfinite: int = 10, stop=None) -> tuple[list[int], object]:
    """Run the loop over random micro-batches; returns the steps saved and the end position (or the error)."""
    settings = LoopSettings(batch=BatchPlan(1, 1, 1, 1.0), log_interval=1, max_nonfinite_steps=max_nonfinite,
                            flops_per_token=1.0, peak_flops_total=1.0, seq_len=8)
    checkpoints = RecordedSaves(interval)
    try:
        end = run_training(engine, RandomSteps(total_steps, rows=1, seq=8, vocab=64), TrainingPosition(), settings,
                           QuietLogger(), checkpoints, torch.device("cpu"), stop)
    except NonFiniteStepsError as error:
        end = error
    return checkpoints.steps, end


def test_the_last_step_is_saved_once_besides_the_interval():
    saved, end = train(SkippingEngine(), total_steps=5, interval=2)
    assert saved == [2, 4, 5] and end.step == 5
    saved, end = train(SkippingEngine(), total_steps=4, interval=2)
    assert saved == [2, 4] and end.step == 4


def test_a_signal_ends_the_loop_after_the_current_step_with_one_save(capsys):
    engine = SkippingEngine()
    saved, end = train(engine, total_steps=8, interval=2, stop=StopAfter(engine, 3))
    # the signal rides on step 4's first collective: step 4 is the last, saved once
    assert saved == [2, 4] and end.step == 4 and engine.steps == 4
    assert "stopped by a signal after step 4" in capsys.readouterr().out


@pytest.mark.parametrize("stop_too", [False, True])
def test_too_many_nonfinite_steps_save_the_last_state_then_stop(stop_too):
    engine = SkippingEngine(skip_from=4)
    saved, end = train(engine, total_steps=20, interval=5, max_nonfinite=3,
                       stop=StopAfter(engine, 5) if stop_too else None)
    assert isinstance(end, NonFiniteStepsError) and "3 optimizer steps in a row" in str(end)
    assert saved == [5, 6] and engine.steps == 6  # steps 4, 5, 6 skipped; the interval save, then the last state once
