"""Evaluation inside ``run_training`` (one process, an engine stand-in that really trains): when it
runs, that training with it is exactly training without it, and that the samples are the greedy
continuations a full-recompute decode gives."""

import pytest
import torch

from minimind import MiniMindConfig, MiniMindForCausalLM
from minimind.data import PackedWindows
from minimind.model.generation import prompt_token_ids
from minimind.tokenizer.loader import load_tokenizer
from minimind.training.ds_config.load import BatchPlan
from minimind.training.evaluation.samples import SampleGenerator
from minimind.training.loop.evaluation_schedule import EvalSettings, Evaluator
from minimind.training.loop.steps import LoopSettings, run_training
from minimind.training.metrics.logger import ThroughputMeter
from minimind.training.position import TrainingPosition
from tests.model_reference import greedy_full_recompute
from tests.recorded_saves import RecordedSaves
from tests.test_evaluation import reference_val_loss
from tests.test_loop_exits import QuietLogger, RandomSteps, SkippingEngine, StopAfter

PROMPTS = ["Return the number of", "x"]
CPU = torch.device("cpu")


class TrainingEngine(SkippingEngine):
    """The stand-in engine with an optimizer that steps: a model with dropout, so that any RNG draw an
    evaluation made would change the training that follows."""

    def __init__(self):
        torch.manual_seed(0)
        super().__init__()
        self.model = MiniMindForCausalLM(MiniMindConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                        num_key_value_heads=2, dropout=0.1, kernel_impl="torch"))
        self.optimizer_ = torch.optim.SGD(self.model.parameters(), lr=0.5)

    def step(self):
        super().step()
        self.optimizer_.step()
        self.optimizer_.zero_grad()


class RecordingLogger(QuietLogger):
    def __init__(self):
        self.losses, self.evaluations, self.samples = [], [], []

    def log(self, metrics):
        self.losses.append(metrics.loss)

    def log_eval(self, position, result):
        self.evaluations.append((position.step, result.val_loss))

    def log_samples(self, step, rows):
        self.samples.append((step, rows))


def train(evaluate: bool, total_steps: int = 6, stop_after: int | None = None,
          start: TrainingPosition | None = None):
    """Train the stand-in on seeded random batches; returns the engine, the logger and the end position."""
    engine, logger, tokenizer = TrainingEngine(), RecordingLogger(), load_tokenizer()

    windows = PackedWindows(torch.randint(3, 6400, (100,), generator=torch.Generator().manual_seed(9)).numpy(), 12)
    settings = LoopSettings(batch=BatchPlan(2, 1, 1, 1.0), log_interval=1, max_nonfinite_steps=10,
                            flops_per_token=1.0, peak_flops_total=1.0, seq_len=12)
    evaluator = None
    if evaluate:
        samples = SampleGenerator(engine, tokenizer, PROMPTS, max_new_tokens=5, device=CPU)
        eval_settings = EvalSettings(eval_set=windows, samples=samples, interval=2, micro_batch=3, max_batches=0,
                                     device=CPU)
        evaluator = Evaluator(engine, eval_settings, logger, rank=0, world=1)
    stop = StopAfter(engine, stop_after) if stop_after else None
    checkpoints = RecordedSaves(interval=100)
    data = RandomSteps(total_steps, rows=2, seq=12, vocab=6400)
    end = run_training(engine, data, start or TrainingPosition(), settings, logger, checkpoints, CPU, stop, evaluator)
    return engine, logger, end, windows, tokenizer


def test_training_with_evaluation_is_training_without_it():
    _, plain, _, _, _ = train(evaluate=False)
    engine, evaluated, end, windows, tokenizer = train(evaluate=True)
    assert evaluated.losses == plain.losses  # exactly: no RNG draw, no mode left changed
    assert [step for step, _ in evaluated.evaluations] == [2, 4, 6] and end.evaluated_step == 6
    final_loss, _ = reference_val_loss(engine.model.eval(), windows)
    assert evaluated.evaluations[-1][1] == pytest.approx(final_loss, rel=1e-5)
    step, rows = evaluated.samples[-1]
    assert step == 6 and [row["prompt"] for row in rows] == PROMPTS
    for prompt, row in zip(PROMPTS, rows, strict=True):
        expected = greedy_full_recompute(engine.model, prompt_token_ids(tokenizer, prompt), 5)
        if tokenizer.eos_token_id in expected:
            expected = expected[:expected.index(tokenizer.eos_token_id)]
        assert row["text"] == tokenizer.decode(expected, skip_special_tokens=True)


def test_a_run_stopped_by_a_signal_is_not_evaluated_at_its_end():
    _, logger, end, _, _ = train(evaluate=True, total_steps=8, stop_after=2)
    assert end.step == 3 and [step for step, _ in logger.evaluations] == [2]


def test_a_resumed_run_does_not_evaluate_a_step_already_evaluated():
    _, logger, _, _, _ = train(evaluate=True, total_steps=5, start=TrainingPosition(step=5, evaluated_step=5))
    assert logger.evaluations == []
    _, logger, _, _, _ = train(evaluate=True, total_steps=5, start=TrainingPosition(step=5, evaluated_step=4))
    assert [step for step, _ in logger.evaluations] == [5]


def test_time_spent_evaluating_or_saving_is_left_out_of_tokens_per_second(monkeypatch):
    clock = iter([0.0, 2.0, 5.0, 6.0])  # start; a pause from 2 s to 5 s; the read at 6 s
    monkeypatch.setattr("minimind.training.metrics.logger.time.perf_counter", lambda: next(clock))
    meter = ThroughputMeter(start_step=0)
    meter.count(torch.tensor(300.0))
    with meter.paused():
        pass
    tokens_per_s, seconds_per_step = meter.read(step=2)
    assert tokens_per_s == pytest.approx(300.0 / 3.0)  # 6 s of wall time, 3 of them paused
    assert seconds_per_step == pytest.approx(6.0 / 2)  # the ETA keeps the pauses: they recur
