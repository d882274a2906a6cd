"""The optimizer-step loop: one objective's step (``loop.objective``) after another, with logging, the stop
guards, evaluations and checkpoints. Accumulation boundaries, clipping, loss scaling and overflow skipping are
the engine's; the loss of a step is its objective's.
"""

from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, replace
from enum import Enum
from typing import Protocol

import torch

from minimind.training.checkpoints.manager import CheckpointManager
from minimind.training.distributed.rank_print import print0
from minimind.training.distributed.stall_watchdog import StallWatchdog
from minimind.training.ds_config.load import BatchPlan
from minimind.training.loop.evaluation_schedule import Evaluator
from minimind.training.loop.objective import TOKEN_LOSS, Objective
from minimind.training.loop.stop_request import StopRequest
from minimind.training.metrics.logger import MetricsLogger, StepMetrics, ThroughputMeter
from minimind.training.position import TrainingPosition


class NonFiniteStepsError(RuntimeError):
    """Too many consecutive optimizer steps were skipped for non-finite gradients."""


class StopReason(Enum):
    """Why the loop ended: its last step (or the data) done, a signal on some rank, too many non-finite steps."""

    FINISHED = "finished"
    SIGNAL = "signal"
    NONFINITE = "nonfinite"


class StopGuards:
    """The loop's two guards in one place: a stop signal voted by any rank, and ``max_nonfinite_steps``
    optimizer steps in a row skipped for non-finite gradients."""

    def __init__(self, max_nonfinite_steps: int):
        self.max_nonfinite_steps = max_nonfinite_steps
        self.nonfinite_in_a_row = 0

    def check(self, skipped: bool, stop_voted: bool) -> StopReason:
        """After a step (``skipped``: the engine skipped it; ``stop_voted``: a rank asked to stop): ``FINISHED``
        to go on, else why the loop ends now."""
        self.nonfinite_in_a_row = self.nonfinite_in_a_row + 1 if skipped else 0
        if self.nonfinite_in_a_row >= self.max_nonfinite_steps:  # it wins over a signal at the same step
            return StopReason.NONFINITE
        if stop_voted:
            return StopReason.SIGNAL
        return StopReason.FINISHED


@dataclass
class LoopSettings:
    """What the loop needs to know besides the engine and the data."""

    batch: BatchPlan
    log_interval: int
    max_nonfinite_steps: int
    flops_per_token: float
    peak_flops_total: float
    seq_len: int  # tokens per sample, counted into the tokens seen


class StepSource(Protocol):
    """Where the loop's optimizer steps come from (``minimind.data.pipeline.TrainingData``): how many the run
    trains, and this rank's micro-batches of each, with its epoch, from a position in an epoch on."""

    total_steps: int

    def optimizer_steps(self, epoch: int, sample_in_epoch: int) -> Iterator[tuple[int, list[dict]]]:
        """Each optimizer step's ``(epoch, micro_batches)`` from global sample ``sample_in_epoch`` of ``epoch``."""


def run_training(
    engine,
    data: StepSource,
    start: TrainingPosition,
    settings: LoopSettings,
    logger: MetricsLogger,
    checkpoints: CheckpointManager,
    device: torch.device,
    stop_request: StopRequest | None = None,
    evaluator: Evaluator | None = None,
    watchdog: StallWatchdog | None = None,
    objective: Objective = TOKEN_LOSS,
) -> TrainingPosition:
    """Train from ``start`` to ``data.total_steps``; returns where training ended.

    ``objective`` runs each optimizer step (the token loss of pretraining and SFT, or DPO's).
    ``data`` deals this rank's micro-batches, epoch after epoch; the loop is the one writer of the
    position (into each new epoch, one step on). ``checkpoints`` saves on its interval and where the loop ends;
    ``evaluator`` (if any) evaluates on its interval and where a finished run ends, before the save of
    the same step, so that the checkpoint records the evaluation.

    A step whose gradients are not finite is skipped by the engine on every rank (fp16: the
    loss scaler; bf16/fp32: DeepSpeed's gradient-overflow check), leaving the weights as they
    were; ``max_nonfinite_steps`` such steps in a row save the (unchanged) state and raise
    ``NonFiniteStepsError``. A signal recorded by ``stop_request`` on any rank ends the loop
    on every rank after the current step, with a checkpoint. ``watchdog`` (if any) hears of every
    finished step, and pauses around evaluations and saves.
    """
    engine.train()
    position = replace(start)
    total_steps = data.total_steps
    logger.start_progress(total_steps, position.step)
    meter = ThroughputMeter(position.step)
    guards = StopGuards(settings.max_nonfinite_steps)
    reason = StopReason.FINISHED
    if evaluator is not None:
        with meter.paused(), paused(watchdog):
            evaluator.start(position)
    steps = data.optimizer_steps(position.epoch, position.sample_in_epoch)
    while position.step < total_steps and (step := next(steps, None)) is not None:
        epoch, micro_batches = step
        position.begin_epoch(epoch)
        lr = engine.get_lr()[0]  # the rate this step uses; the scheduler advances inside the step
        skipped_before = engine.skipped_steps
        result = objective.train_step(engine, micro_batches, device,
                                      stop_request is not None and stop_request.requested)
        position.advance(settings.batch.global_batch, settings.seq_len)
        meter.count(result.target_count)
        logger.advance()
        if position.step % settings.log_interval == 0 or position.step == total_steps:
            logger.log(step_metrics(engine, position, total_steps, settings, result, lr, *meter.read(position.step)))
        reason = guards.check(skipped=engine.skipped_steps > skipped_before, stop_voted=result.stop)
        if reason is not StopReason.FINISHED:
            break
        if watchdog is not None:
            watchdog.beat(position.step)
        with meter.paused(), paused(watchdog):  # tokens/s is training's alone
            if evaluator is not None:
                evaluator.after_step(position)
            checkpoints.after_step(position)
    with paused(watchdog):
        if evaluator is not None and reason is StopReason.FINISHED:
            evaluator.close(position)
        checkpoints.close(position)
    if reason is StopReason.NONFINITE:
        raise NonFiniteStepsError(
            f"{guards.nonfinite_in_a_row} optimizer steps in a row had non-finite gradients and were skipped "
            f"(step {position.step}); the last good state is saved, resume with --from_resume 1 after "
            "lowering the learning rate or checking the data"
        )
    if reason is StopReason.SIGNAL:
        print0(f"stopped by a signal after step {position.step}; resume with --from_resume 1")
    return position


def paused(watchdog: StallWatchdog | None):
    """``watchdog.paused()``, or nothing without one."""
    return watchdog.paused() if watchdog is not None else nullcontext()


def step_metrics(engine, position, total_steps, settings, result, lr, tokens_per_s, seconds_per_step) -> StepMetrics:
    """Collect one step's numbers from the engine and the step result."""
    grad_norm = engine.get_global_grad_norm()
    scaler = getattr(engine.optimizer, "cur_scale", None) if engine.fp16_enabled() else None
    return StepMetrics(
        step=position.step,
        total_steps=total_steps,
        epoch=position.epoch,
        loss=result.loss,
        aux_loss=result.aux_loss,
        lr=lr,
        grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
        tokens_per_s=tokens_per_s,
        tokens_seen=position.tokens_seen,
        mfu=settings.flops_per_token * tokens_per_s / settings.peak_flops_total,
        loss_scale=float(scaler) if scaler is not None else None,
        skipped_steps=int(engine.skipped_steps),
        eta_s=seconds_per_step * (total_steps - position.step),
        extra=result.extra,
    )
