"""When the training loop evaluates: every ``--eval_interval`` steps and once more where it ends."""

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from minimind.training.evaluation.samples import SampleGenerator
from minimind.training.evaluation.validation_loss import EvalObjective, evaluate
from minimind.training.loop.objective import TOKEN_LOSS
from minimind.training.metrics.logger import MetricsLogger
from minimind.training.position import TrainingPosition


@dataclass
class EvalSettings:
    """What an evaluation runs over: the eval set (or None) with the objective that measures it, and the
    sample prompts' generator (or None)."""

    eval_set: Dataset | None  # PackedWindows, conversations or preference pairs, each with blank()
    samples: SampleGenerator | None
    interval: int
    micro_batch: int
    max_batches: int
    device: torch.device
    objective: EvalObjective = TOKEN_LOSS  # the stage's
    at_start: bool = False  # evaluate the starting weights too (fine-tuning: the figures it starts from)

    @property
    def enabled(self) -> bool:
        """Whether there is anything to evaluate."""
        return self.eval_set is not None or self.samples is not None


class Evaluator:
    """Owns the evaluation policy: ``start`` evaluates the starting weights of a fresh run where asked (a
    fine-tuning stage), ``after_step`` evaluates on the interval, ``close`` where a finished run ends, unless
    that step was already evaluated (also by the run a resume continues: the checkpoint records
    ``position.evaluated_step``). A run stopped by a signal or by non-finite steps is not evaluated
    at its end. Each evaluation logs the validation loss and writes the samples.
    """

    def __init__(self, engine, settings: EvalSettings, logger: MetricsLogger, rank: int, world: int):
        self.engine = engine
        self.settings = settings
        self.logger = logger
        self.rank, self.world = rank, world

    def start(self, position: TrainingPosition) -> None:
        """Evaluate the weights a fresh run starts from (step 0) when the settings ask for it."""
        if self.settings.at_start and position.step == 0:
            self.evaluate(position)

    def after_step(self, position: TrainingPosition) -> None:
        """Evaluate when ``position.step`` is a multiple of the interval."""
        if position.step % self.settings.interval == 0:
            self.evaluate(position)

    def close(self, position: TrainingPosition) -> None:
        """Evaluate the final ``position`` unless it is already evaluated."""
        if position.step != position.evaluated_step:
            self.evaluate(position)

    def evaluate(self, position: TrainingPosition) -> None:
        """Validation loss and samples at ``position`` now (every rank), logged by rank 0."""
        settings = self.settings
        if not settings.enabled:
            return
        if settings.eval_set is not None:
            result = evaluate(self.engine, settings.eval_set, settings.objective, micro_batch=settings.micro_batch,
                              max_batches=settings.max_batches, rank=self.rank, world=self.world,
                              device=settings.device)
            self.logger.log_eval(position, result)
        if settings.samples is not None:
            self.logger.log_samples(position.step, settings.samples.generate())
        position.evaluated_step = position.step
