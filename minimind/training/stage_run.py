"""Builds the pieces of a training run (pretraining, SFT or DPO) from its config and runs it.

Order matters: every check that can fail on user input (flags, DeepSpeed JSON, save
folder, tokenizer, data file) runs before the process group, the token cache or the
model exist, so bad input costs a second and one line, never a DeepSpeed traceback.
A fine-tuning stage differs only in its samples (conversations or preference pairs, read
and checked before the process group) and its objective (``loop.objective``); DPO adds
its frozen reference model.
"""

from dataclasses import replace
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from torch.utils.data import Dataset

from minimind.data import (
    DataSource,
    RepeatedSamples,
    check_fills_one_global_batch,
)
from minimind.data.chat_data import CHAT_DATA, load_chat_samples
from minimind.data.pipeline import cache_location, load_samples, training_data
from minimind.data.token_cache import source_identity
from minimind.errors import ConfigError
from minimind.model import MiniMindConfig
from minimind.model.precision import precision_of
from minimind.tokenizer.loader import load_tokenizer
from minimind.training.checkpoints.resume_choice import resume_request
from minimind.training.config import RunConfig
from minimind.training.distributed.collectives import accelerator_device, barrier, broadcast_object, participants
from minimind.training.distributed.process_group import init_process_group, leave_process_group, local_device_index
from minimind.training.distributed.rank_print import print0
from minimind.training.distributed.stall_watchdog import STALL_FRACTION, StallWatchdog
from minimind.training.distributed.world import global_rank, launched_world, local_rank, world_size
from minimind.training.ds_config.corpus_fit import fit_batch_to_corpus
from minimind.training.ds_config.load import resolve_ds_config
from minimind.training.evaluation.samples import ChatStyle, read_sample_prompts
from minimind.training.hardware.offload_build import check_host_optimizer_build
from minimind.training.hardware.peak_flops import peak_flops, tf32_enabled
from minimind.training.loop.evaluation_schedule import Evaluator
from minimind.training.loop.objective import TOKEN_LOSS, Objective, TokenLoss
from minimind.training.loop.preference_objective import PreferenceLoss
from minimind.training.loop.steps import LoopSettings, run_training
from minimind.training.loop.stop_request import StopRequest
from minimind.training.metrics.logger import MetricsLogger, check_wandb_installed, model_flops_per_token
from minimind.training.parallel.autoep import (
    resolve_expert_parallel,
)
from minimind.training.parallel.moe_path import moe_dispatch_notes
from minimind.training.position import TrainingPosition
from minimind.training.run.announce import announce
from minimind.training.run.checkpoint_contents import RunRecord, ScheduleRecord, checkpoint_manager
from minimind.training.run.engine import build_engine, model_dtype
from minimind.training.run.evaluation_plan import announce_evaluation, eval_settings
from minimind.training.run.inputs import RunInputs
from minimind.training.run.reference_model import reference_engine
from minimind.training.run.resume import agree_on_resume, check_resume_alone, resume_state
from minimind.training.run.settings_file import run_settings, write_run_settings
from minimind.training.run.start_weights import check_from_weight
from minimind.training.run_dir.checks import check_shared, check_writable
from minimind.training.run_dir.files import METRICS_FILE
from minimind.training.run_dir.owner import claim_save_dir, refuse_fresh_run_over_checkpoints
from minimind.training.stages import STAGES
from minimind_kernels.dispatch import KernelUnavailableError, resolve_impl


def run_stage(config: RunConfig) -> TrainingPosition:
    """Run the whole job ``config`` describes; returns where training stopped."""
    inputs = check_inputs(config)
    if inputs.chat is not None:  # a fine-tuning stage's samples, read by check_inputs
        samples, eval_set = inputs.chat.train, inputs.chat.validation
    else:
        # The token cache is built before the process group exists: the ranks that need it wait on
        # a file lock, never in a collective that a long tokenization would outlast.
        samples, eval_set = load_samples(inputs.data, inputs.tokenizer, inputs.cache_locations,
                                             inputs.eval_cache_location, local_rank(), print0)
    inputs, samples, fit_note = fit_samples(inputs, samples)
    announce(config, inputs, launched_world(), fit_note)
    announce_evaluation(config, inputs, eval_set)
    start_process_group(config, inputs)
    inputs = follow_rank_zero_precision(inputs)
    save_dir_lock = claim_save_dir(inputs.save_dir, overwrite=config.checkpoint.overwrite)
    try:
        position = train(config, agree_on_resume(config.checkpoint, inputs), samples, eval_set)
    finally:
        save_dir_lock.release()
    # Tear the process group down before exit: left to interpreter shutdown, gloo's threads
    # can abort the process ("terminate called without an active exception").
    barrier()
    leave_process_group()
    return position


def train(config: RunConfig, inputs: RunInputs, samples: Dataset, eval_set: Dataset | None) -> TrainingPosition:
    """Build the data, the engine (and DPO's reference), the logger and the evaluator, resume if asked, and run
    the loop; returns where it stopped."""
    data = training_data(samples, inputs.data, inputs.batch.micro_batch, inputs.batch.accumulation,
                         dist.get_world_size(), dist.get_rank(), config.schedule.epochs, config.schedule.max_steps,
                         pin_memory=not inputs.cpu_only, log=print0, kind=STAGES[config.stage.name].data)
    engine, n_params = build_engine(config, inputs, data.total_steps)
    objective = stage_objective(config, inputs)
    device = accelerator_device()
    checkpoints = checkpoint_manager(config, inputs, engine)
    position, wandb_run_id = resume_state(config.checkpoint, checkpoints, inputs, data)
    recorded = run_settings(config, inputs, n_params, position, data.total_steps, data.mixture)
    write_run_settings(inputs.save_dir, recorded)
    logged_config = {**config.flags, **({"mixture": recorded["mixture"]} if "mixture" in recorded else {})}
    logger = MetricsLogger(inputs.save_dir, config.logging.use_wandb, config.logging.wandb_project, wandb_run_id,
                           logged_config, engine.monitor)
    checkpoints.contribute(RunRecord.of(config, inputs), ScheduleRecord(data.total_steps, config.schedule.warmup_steps),
                           logger)
    settings = LoopSettings(
        batch=inputs.batch,
        log_interval=config.logging.log_interval,
        max_nonfinite_steps=config.logging.max_nonfinite_steps,
        flops_per_token=model_flops_per_token(inputs.model_config, n_params, config.data.max_seq_len),
        peak_flops_total=peak_flops(device, model_dtype(inputs.ds_config), tf32=tf32_enabled())
        * inputs.batch.data_parallel,
        seq_len=config.data.max_seq_len * STAGES[config.stage.name].rows_per_sample,
    )
    rank, world = participants()
    evaluator = Evaluator(engine, eval_settings(config, inputs, engine, eval_set, device, objective), logger,
                          rank, world)

    # a stuck collective ends this rank with the status-5 line before NCCL's watchdog aborts it
    stall_limit_s = STALL_FRACTION * config.distributed.collective_timeout
    watchdog = StallWatchdog(rank, stall_limit_s).start() if world > 1 else None
    try:
        position = run_training(engine, data, position, settings, logger, checkpoints, device,
                                StopRequest().install(), evaluator, watchdog, objective)
    finally:
        if watchdog is not None:
            watchdog.close()
    logger.close()
    print0(
        f"done at step {position.step}: checkpoints in {inputs.save_dir / 'checkpoints'} (resume with "
        f"--from_resume 1), MiniMind weights in {config.weights_path()}, "
        f"metrics in {inputs.save_dir / METRICS_FILE}"
    )
    print0(f"plots and a summary of the run: python -m minimind.report {inputs.save_dir}")
    return position


def stage_objective(config: RunConfig, inputs: RunInputs) -> Objective:
    """What the run's steps optimise: the token loss, or DPO's against its reference model (built here), with the
    sequence log-probabilities of the family's trainer (minimind2: e119db8's means; minimind3: today's sums)."""
    if config.stage.name == "sft":
        return TokenLoss(config.model.packed_attention)
    if config.stage.name != "dpo":
        return TOKEN_LOSS
    return PreferenceLoss(reference_engine(config, inputs), config.stage.beta,
                          mean_over_tokens=inputs.model_config.model_family == "minimind2")


def check_inputs(config: RunConfig) -> RunInputs:
    """Every check that can fail on user input, in one place, before the process group exists (a fine-tuning
    stage's data is read and checked here whole)."""
    accelerator = get_accelerator()
    ds_config, batch = resolve_ds_config(
        config.host.deepspeed_config,
        data_parallel=world_size(),
        fp16_supported=accelerator.is_fp16_supported(),
        micro_batch=config.batch.micro_batch,
        accumulation=config.batch.accumulation,
        grad_clip=config.batch.grad_clip,
        learning_rate=config.batch.learning_rate,
    )
    check_host_optimizer_build(ds_config, config.host.deepspeed_config)
    save_dir = config.checkpoint.records_dir
    check_writable(save_dir)
    refuse_fresh_run_over_checkpoints(save_dir, resuming=config.checkpoint.resuming,
                                      overwrite=config.checkpoint.overwrite)
    tokenizer = load_tokenizer(config.model.tokenizer_path)
    model_config = MiniMindConfig(**config.model.config_kwargs, vocab_size=max(len(tokenizer), 6400))
    check_from_weight(config, model_config)
    kind = STAGES[config.stage.name].data
    fine_tuning = kind in CHAT_DATA
    data = config.data
    if data.max_seq_len > model_config.max_position_embeddings:
        raise ConfigError(f"--max_seq_len {data.max_seq_len} exceeds the model's max_position_embeddings "
                          f"{model_config.max_position_embeddings}")
    device = torch.device(accelerator.device_name(local_device_index()))
    check_kernels_run_on(config.model.kernels, device)
    if config.model.packed_attention == "flex" and device.type != "cuda":
        raise ConfigError(f"--packed_attention flex: FlexAttention trains on CUDA only (it has no backward on "
                          f"{device.type}); use mask, or auto")
    if config.logging.use_wandb:
        check_wandb_installed()
    prompts = config.evaluation.sample_prompts
    sample_chat = ChatStyle(model_config.model_family) if fine_tuning else None  # pretraining: continuations
    sample_prompts = tuple(read_sample_prompts(prompts, tokenizer, model_config.max_position_embeddings,
                                               sample_chat) if prompts else ())
    ep_size = resolve_expert_parallel(ds_config, config.model.ep_size, model_config, world_size(),
                                      config.host.deepspeed_config)
    reference = check_reference(config, ep_size)
    chat = None  # the heavy part last: a fine-tuning stage reads its whole file, pretraining checks its files
    if fine_tuning:
        chat = load_chat_samples(kind, data, tokenizer, print0)
        for line in chat.lines:
            print0(line)
        data = replace(data, sources=(DataSource(str(chat.path), (chat.path,), None),))
    cache_locations = () if chat else tuple(cache_location(path, tokenizer, data) for path in data.data_paths)
    eval_cache_location = (cache_location(Path(data.eval_data_path), tokenizer, data)
                           if data.eval_data_path and not chat else None)
    host_notes = config.host.notes + moe_dispatch_notes(model_config, ep_size, device, precision_of(ds_config))
    inputs = RunInputs(config.host.cpu_only, config.demo, ds_config, batch, save_dir, tokenizer, model_config, data,
                       cache_locations, resume_request(config.checkpoint, save_dir), ep_size,
                       fit_batch_to_corpus=not data.data_paths and (config.demo or not config.batch.chosen),
                       host_notes=host_notes, precision_timed=config.host.precision_timed,
                       eval_cache_location=eval_cache_location, sample_prompts=sample_prompts,
                       stage=config.stage.name, content_digest=chat.content_digest if chat else None,
                       reference=reference, chat=chat, sample_chat=sample_chat)
    return check_resume_alone(config.checkpoint, inputs)


def check_reference(config: RunConfig, ep_size: int | None) -> dict | None:
    """DPO's reference weights, ``{"path", "blake2b"}`` (None in other stages): ``--from_weight`` is required (its
    fit to the model is ``check_from_weight``'s), and AutoEP is refused (the reference has no expert-parallel
    engine of its own yet)."""
    if config.stage.name != "dpo":
        return None
    path = config.from_weight_path()
    if path is None:
        raise ConfigError("--from_weight none: DPO needs the weights of the model it aligns (MiniMind: full_sft), "
                          "which are also its frozen reference")
    if path == config.weights_path():
        raise ConfigError(f"--save_weight {config.checkpoint.save_weight}: DPO would overwrite its own reference "
                          f"weights {path} (--from_weight); choose another --save_weight (MiniMind: dpo)")
    if ep_size is not None:
        raise ConfigError("dpo_ds.py: expert parallelism (AutoEP, --ep_size or the JSON's expert_parallel) is not "
                          "supported for DPO yet; run the MoE model without it")
    return {"path": str(path), "blake2b": source_identity(path)["blake2b"]}


def check_kernels_run_on(impl: str, device: torch.device) -> None:
    """Raise ``ConfigError`` when ``--kernels impl`` cannot run on ``device`` (``triton`` without
    the package, or on a CPU without ``TRITON_INTERPRET=1``)."""
    try:
        resolve_impl(impl, device)
    except KernelUnavailableError as error:
        raise ConfigError(str(error)) from None


def start_process_group(config: RunConfig, inputs: RunInputs) -> None:
    """Join the process group with the collective timeout on this rank's device, check that
    every node sees the same ``--save_dir``, seed every RNG and set the fp32 matmul precision."""
    waits = config.distributed
    init_process_group(waits.collective_timeout, waits.rendezvous_timeout, waits.rendezvous_report_interval)
    check_shared(inputs.save_dir)
    deepspeed.runtime.utils.set_random_seed(config.schedule.seed)
    if tf32_matmuls(config.host.tf32, inputs.ds_config, accelerator_device()):
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores for fp32 matmuls


def follow_rank_zero_precision(inputs: RunInputs) -> RunInputs:
    """Where each rank timed its own precision (a CPU run without ``--deepspeed_config``), every rank
    takes rank 0's: ranks in different precisions cannot reduce their gradients together, and on a
    busy node, or nodes with other processors, the timings may disagree."""
    if not inputs.precision_timed:
        return inputs
    mine = precision_of(inputs.ds_config)
    agreed = broadcast_object(mine)
    if agreed == mine:
        return inputs
    print(f"rank {global_rank()}: timed {mine} as the faster precision here; trains in rank 0's {agreed}", flush=True)
    return replace(inputs, ds_config={**inputs.ds_config, "bf16": {"enabled": agreed == "bf16"}})


def tf32_matmuls(tf32: bool, ds_config: dict, device: torch.device) -> bool:
    """Whether fp32 matmuls run on TF32 tensor cores: fp32 training on CUDA, unless ``--tf32 0``."""
    return tf32 and device.type == "cuda" and precision_of(ds_config) == "fp32"


def fit_samples(inputs: RunInputs, samples: Dataset) -> tuple[RunInputs, Dataset, str | None]:
    """The batch and samples the run trains with, and a line saying what changed (or None).

    Where the run trains on the bundled corpus with a batch nobody chose, the batch (and, if
    need be, a repetition of the corpus) gives an epoch enough steps. Otherwise samples that
    do not fill one global batch are a one-line ``DataError``, raised before the process group.
    """
    fit = fit_batch_to_corpus(len(samples), inputs.batch) if inputs.fit_batch_to_corpus else None
    if fit is not None and fit.note is not None:
        ds_config = {**inputs.ds_config, "gradient_accumulation_steps": fit.batch.accumulation,
                     "train_batch_size": fit.batch.global_batch}
        fitted = replace(inputs, ds_config=ds_config, batch=fit.batch)
        return fitted, RepeatedSamples(samples, fit.repeats) if fit.repeats > 1 else samples, fit.note
    check_fills_one_global_batch(len(samples), inputs.batch.global_batch, inputs.data.description())
    return inputs, samples, None


