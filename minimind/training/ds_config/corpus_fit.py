"""Fitting the flag-less run's batch to the bundled corpus, so that it starts on any cluster size.

The bundled corpus is about 2.5M tokens. MiniMind's batch (micro-batch 32 x accumulation 8
x 341 tokens per GPU) takes 87k tokens a step per GPU, so on 4 GPUs an epoch is 7 steps
and on 32 GPUs the corpus does not fill a single step. When the run trains on the bundled
corpus with a batch the user did not choose, gradient accumulation is lowered until an
epoch has ``MIN_STEPS_PER_EPOCH`` steps; where even accumulation 1 does not get there, the
corpus is also repeated within the epoch. Data the user names is never changed: a file too
small for its batch stays a one-line error.
"""

from dataclasses import dataclass, replace

from minimind.training.ds_config.load import BatchPlan

MIN_STEPS_PER_EPOCH = 10


@dataclass(frozen=True)
class CorpusFit:
    """The batch to train with, how many times the corpus is repeated per epoch, and a line saying why."""

    batch: BatchPlan
    repeats: int
    note: str | None


def fit_batch_to_corpus(samples: int, batch: BatchPlan, min_steps: int = MIN_STEPS_PER_EPOCH) -> CorpusFit:
    """Lower ``batch``'s accumulation (then repeat the corpus) until ``samples`` fill ``min_steps`` steps."""

    def steps(accumulation: int, repeats: int = 1) -> int:
        return samples * repeats // (batch.micro_batch * accumulation * batch.data_parallel)

    if steps(batch.accumulation) >= min_steps:
        return CorpusFit(batch, 1, None)
    accumulation = next((a for a in range(batch.accumulation, 0, -1) if steps(a) >= min_steps), 1)
    fitted = replace(batch, accumulation=accumulation)
    short = (f"the bundled corpus ({samples} samples) fills {steps(batch.accumulation)} steps of "
             f"{batch.global_batch} samples on {batch.data_parallel} ranks")
    if steps(accumulation) >= min_steps:
        return CorpusFit(fitted, 1, f"{short}: gradient accumulation lowered from {batch.accumulation} to "
                                    f"{accumulation}, {steps(accumulation)} steps per epoch")
    repeats = -(-min_steps * fitted.global_batch // samples)
    return CorpusFit(fitted, repeats, f"{short}: gradient accumulation lowered from {batch.accumulation} to 1 and "
                                      f"the corpus repeated {repeats} times per epoch, "
                                      f"{steps(1, repeats)} steps per epoch")
