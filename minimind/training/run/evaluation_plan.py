"""What each evaluation of a run runs over (the eval windows, the sample prompts), and the line that says so."""

import torch
from torch.utils.data import Dataset

from minimind.data import PackedWindows
from minimind.training.config import RunConfig
from minimind.training.distributed.rank_print import print0
from minimind.training.evaluation.samples import SampleGenerator
from minimind.training.evaluation.validation_loss import EvalObjective, eval_batch_count
from minimind.training.loop.evaluation_schedule import EvalSettings
from minimind.training.run.inputs import RunInputs
from minimind.training.run_dir.files import SAMPLES_FILE


def eval_settings(config: RunConfig, inputs: RunInputs, engine, eval_set: Dataset | None,
                  device: torch.device, objective: EvalObjective) -> EvalSettings:
    """What each evaluation runs: the eval samples measured by ``objective``, and the sample prompts (either may
    be absent; a fine-tuning stage's prompts go through the chat template)."""
    samples = (SampleGenerator(engine, inputs.tokenizer, list(inputs.sample_prompts), config.evaluation.sample_tokens,
                               device, inputs.sample_chat) if inputs.sample_prompts else None)
    return EvalSettings(eval_set=eval_set, samples=samples, interval=config.evaluation.interval,
                        micro_batch=inputs.batch.micro_batch, max_batches=config.evaluation.max_batches, device=device,
                        objective=objective, at_start=inputs.chat is not None)


def announce_evaluation(config: RunConfig, inputs: RunInputs, eval_set: Dataset | None) -> None:
    """Rank 0 states what each evaluation runs over, and how often."""
    if eval_set is not None:
        source = (f"{config.data.eval_fraction:g} of the data held out of training" if config.data.eval_fraction
                  else config.data.eval_data_path)
        batches = eval_batch_count(len(eval_set), inputs.batch.micro_batch, inputs.batch.data_parallel,
                                   config.evaluation.max_batches)
        targets = (f" ({eval_set.num_label_tokens:,} target tokens)" if isinstance(eval_set, PackedWindows)
                   else "")
        print0(f"evaluation: {len(eval_set)} samples{targets} from {source}, {batches} micro-batches per rank "
               f"{'before the first step, ' if inputs.chat is not None else ''}every {config.evaluation.interval} "
               "steps and at the end")
    if inputs.sample_prompts:
        print0(f"samples: {len(inputs.sample_prompts)} prompts continued by {config.evaluation.sample_tokens} "
               f"tokens at each evaluation, into {inputs.save_dir / SAMPLES_FILE}")
