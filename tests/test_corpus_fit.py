"""The flag-less run's batch fitted to the bundled corpus on any cluster size (no processes launched)."""

import pytest

from minimind.data import DataError
from minimind.data.pipeline import DataSettings
from minimind.training.ds_config.corpus_fit import MIN_STEPS_PER_EPOCH, fit_batch_to_corpus
from minimind.training.ds_config.load import BatchPlan
from minimind.training.run.inputs import RunInputs
from minimind.training.stage_run import fit_samples

# The bundled corpus at max_seq_len 340: 2,549,233 tokens in windows of 341.
BUNDLED_WINDOWS = -(-2_549_233 // 341)


def steps_per_epoch(samples: int, batch: BatchPlan, repeats: int) -> int:
    return samples * repeats // batch.global_batch


@pytest.mark.parametrize("gpus", [1, 2, 8, 32, 64, 256, 1024, 8192])
def test_minimind_s_batch_starts_on_any_cluster_size(gpus):
    configured = BatchPlan(micro_batch=32, accumulation=8, data_parallel=gpus, grad_clip=1.0)
    fit = fit_batch_to_corpus(BUNDLED_WINDOWS, configured)
    assert fit.batch.micro_batch == 32 and fit.batch.data_parallel == gpus
    assert steps_per_epoch(BUNDLED_WINDOWS, fit.batch, fit.repeats) >= MIN_STEPS_PER_EPOCH
    if steps_per_epoch(BUNDLED_WINDOWS, configured, 1) >= MIN_STEPS_PER_EPOCH:
        assert fit.batch == configured and fit.repeats == 1 and fit.note is None  # nothing to change
        return
    assert fit.note is not None and "\n" not in fit.note
    # the largest accumulation that fills the minimum, and a repeat only where even 1 does not
    if fit.repeats == 1:
        assert f"lowered from 8 to {fit.batch.accumulation}" in fit.note
        bigger = BatchPlan(32, fit.batch.accumulation + 1, gpus, 1.0)
        assert fit.batch.accumulation == 8 or steps_per_epoch(BUNDLED_WINDOWS, bigger, 1) < MIN_STEPS_PER_EPOCH
    else:
        assert fit.batch.accumulation == 1 and f"repeated {fit.repeats} times" in fit.note
        assert steps_per_epoch(BUNDLED_WINDOWS, fit.batch, fit.repeats - 1) < MIN_STEPS_PER_EPOCH


def test_8_gpus_lower_accumulation_and_32_repeat_the_corpus():
    # 7,476 windows: 8 GPUs x 32 x accumulation 2 = 512 a step, 14 steps; 32 GPUs x 32 = 1,024, 7 steps
    assert BUNDLED_WINDOWS == 7476
    eight = fit_batch_to_corpus(BUNDLED_WINDOWS, BatchPlan(32, 8, 8, 1.0))
    assert (eight.batch.accumulation, eight.repeats) == (2, 1)
    thirty_two = fit_batch_to_corpus(BUNDLED_WINDOWS, BatchPlan(32, 8, 32, 1.0))
    assert (thirty_two.batch.accumulation, thirty_two.repeats) == (1, 2)
    assert thirty_two.note.endswith("repeated 2 times per epoch, 14 steps per epoch")

# The data section of a flag-less run: the bundled corpus, MiniMind's defaults.
BUNDLED_CORPUS = DataSettings(sources=(), max_seq_len=340, packing=True, eval_fraction=None, eval_data_path=None,
                              skip_bad_lines=False, text_field="text", mixture_exhaust="repeat", seed=42,
                              tokenize_workers=1)


def run_inputs(batch: BatchPlan, fit: bool) -> RunInputs:
    ds_config = {"train_micro_batch_size_per_gpu": batch.micro_batch,
                 "gradient_accumulation_steps": batch.accumulation, "train_batch_size": batch.global_batch}
    return RunInputs(cpu_only=False, demo=False, ds_config=ds_config, batch=batch, save_dir=None, tokenizer=None,
                     model_config=None, data=BUNDLED_CORPUS, cache_locations=(), resume_request=None, ep_size=None,
                     fit_batch_to_corpus=fit)


def test_the_run_trains_with_the_fitted_batch_and_repeated_samples():
    samples = [{"sample": index} for index in range(300)]
    inputs, fitted_samples, note = fit_samples(run_inputs(BatchPlan(4, 8, 32, 1.0), fit=True), samples)
    # 300 samples, 128 a step at accumulation 1: 2 steps; repeated 5 times, 11 steps
    assert inputs.batch == BatchPlan(4, 1, 32, 1.0) and note is not None
    assert inputs.ds_config["gradient_accumulation_steps"] == 1 and inputs.ds_config["train_batch_size"] == 128
    assert len(fitted_samples) == 1500 and [fitted_samples[i] for i in (0, 299, 300, 1499)] == \
        [samples[0], samples[299], samples[0], samples[299]]


def test_a_batch_the_user_chose_is_left_alone_and_refused_where_the_samples_cannot_fill_it():
    chosen = run_inputs(BatchPlan(4, 2, 32, 1.0), fit=False)
    samples = list(range(256))
    assert fit_samples(chosen, samples) == (chosen, samples, None)
    with pytest.raises(DataError, match="^the bundled corpus: 255 samples do not fill one global batch of 256$"):
        fit_samples(chosen, samples[:-1])
