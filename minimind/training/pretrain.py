"""Builds the pieces of a pretraining run from parsed flags and runs it.

Order matters: every check that can fail on user input (flags, DeepSpeed JSON, save
folder, tokenizer, data file) runs before the process group, the token cache or the
model exist, so bad input costs a second and one line, never a DeepSpeed traceback.
"""

import argparse
from dataclasses import replace
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from torch.utils.data import Dataset

from minimind.data import (
    EXHAUST_MEANINGS,
    Corpus,
    DataError,
    DataSource,
    DocumentSplit,
    MixedSamples,
    MixtureSource,
    PackedWindows,
    PaddedDocuments,
    RankInvariantSampler,
    RepeatedSamples,
    TokenCache,
    TokenCacheLocation,
    TokenSpans,
    build_or_load_token_cache,
    build_or_load_token_caches,
    check_fills_one_global_batch,
    data_sources,
    default_corpus_path,
    document_stream,
    make_data_loader,
    source_files,
    split_documents,
    token_cache_location,
    validate_texts,
)
from minimind.errors import ConfigError
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.model.moe import SYNC_FREE_ON_GPU, grouped_dispatch_planned
from minimind.model.precision import PRECISION_BYTES, PRECISION_DTYPES, precision_of
from minimind.tokenizer.loader import load_tokenizer
from minimind.training.arguments import CPU_DEMO, apply_defaults, choose_cpu_ds_config, model_config_kwargs
from minimind.training.checkpoint_writer import checkpoint_writer
from minimind.training.checkpointer import Checkpointer
from minimind.training.checkpointing import (
    TrainingPosition,
)
from minimind.training.collectives import accelerator_device, barrier, broadcast_object, participants
from minimind.training.corpus_fit import fit_batch_to_corpus
from minimind.training.cpu_host import cores_per_rank, set_cpu_threads
from minimind.training.ds_config import resolve_ds_config
from minimind.training.evaluation import eval_batch_count
from minimind.training.evaluator import EvalSettings, Evaluator
from minimind.training.expert_parallel import (
    install_aux_loss,
    resolve_expert_parallel,
)
from minimind.training.host_optimizer_build import check_host_optimizer_build
from minimind.training.loop import LoopSettings, run_training
from minimind.training.lr_schedule import minimind_scheduler
from minimind.training.metrics import MetricsLogger, check_wandb_installed, model_flops_per_token
from minimind.training.peak_flops import peak_flops, tf32_enabled
from minimind.training.process_group import init_process_group, local_device_index
from minimind.training.rank_print import print0
from minimind.training.resume import resume_request
from minimind.training.resume_run import resume_state, with_resume
from minimind.training.run_files import METRICS_FILE, SAMPLES_FILE
from minimind.training.run_inputs import RunInputs, TrainingData, weights_name
from minimind.training.run_settings import run_settings, write_run_settings
from minimind.training.samples import SampleGenerator, read_sample_prompts
from minimind.training.save_dir import check_shared, check_writable, disk_space_warning
from minimind.training.save_dir_owner import claim_save_dir, refuse_fresh_run_over_checkpoints
from minimind.training.stall_watchdog import STALL_FRACTION, StallWatchdog
from minimind.training.stop_request import StopRequest
from minimind.training.world import LaunchedWorld, global_rank, launched_world, local_rank, world_size
from minimind_kernels.dispatch import KernelUnavailableError, resolve_impl


def pretrain(args: argparse.Namespace) -> TrainingPosition:
    """Run the whole job described by ``args``; returns where training stopped."""
    inputs = check_inputs(args)
    # The token cache is built before the process group exists: the ranks that need it wait on
    # a file lock, never in a collective that a long tokenization would outlast.
    samples, eval_windows = load_samples(args, inputs)
    inputs, samples, fit_note = fit_samples(inputs, samples)
    announce(args, inputs, launched_world(), fit_note)
    announce_evaluation(args, inputs, eval_windows)
    start_process_group(args, inputs)
    inputs = follow_rank_zero_precision(inputs)
    save_dir_lock = claim_save_dir(inputs.save_dir, overwrite=args.overwrite)
    try:
        position = train(args, with_resume(args, inputs), samples, eval_windows)
    finally:
        save_dir_lock.release()
    # Tear the process group down before exit: left to interpreter shutdown, gloo's threads
    # can abort the process ("terminate called without an active exception").
    barrier()
    dist.destroy_process_group()
    return position


def train(args: argparse.Namespace, inputs: RunInputs, samples: Dataset,
          eval_windows: PackedWindows | None) -> TrainingPosition:
    """Build the data, the engine, the logger and the evaluator, resume if asked, and run the loop; returns
    where it stopped."""
    data = training_data(args, inputs, samples)
    engine, n_params = build_engine(args, inputs, data.total_steps)
    device = accelerator_device()
    position, wandb_run_id = resume_state(args, engine, inputs, data)
    recorded = run_settings(args, inputs, n_params, position, data.total_steps, data.mixture)
    write_run_settings(inputs.save_dir, recorded)
    run_config = {**vars(args), **({"mixture": recorded["mixture"]} if "mixture" in recorded else {})}
    logger = MetricsLogger(inputs.save_dir, args.use_wandb, args.wandb_project, wandb_run_id, run_config,
                           engine.monitor)
    checkpointer = Checkpointer(checkpoint_writer(args, inputs, engine, logger.wandb_run_id, data.total_steps),
                                args.save_interval, saved_step=position.step)
    settings = LoopSettings(
        epochs=args.epochs,
        total_steps=data.total_steps,
        batch=inputs.batch,
        log_interval=args.log_interval,
        max_nonfinite_steps=args.max_nonfinite_steps,
        flops_per_token=model_flops_per_token(inputs.model_config, n_params, args.max_seq_len),
        peak_flops_total=peak_flops(device, model_dtype(inputs.ds_config), tf32=tf32_enabled())
        * inputs.batch.data_parallel,
        seq_len=args.max_seq_len,
    )
    rank, world = participants()
    evaluator = Evaluator(engine, eval_settings(args, inputs, engine, eval_windows, device), logger, rank, world)

    def micro_batches_for_epoch(epoch: int, start_sample: int):
        for line in data.start_epoch(epoch, start_sample):
            print0(line)
        return iter(data.loader)

    # a stuck collective ends this rank with the status-5 line before NCCL's watchdog aborts it
    watchdog = StallWatchdog(rank, STALL_FRACTION * args.collective_timeout).start() if world > 1 else None
    try:
        position = run_training(engine, micro_batches_for_epoch, position, settings, logger, checkpointer, device,
                                StopRequest().install(), evaluator, watchdog)
    finally:
        if watchdog is not None:
            watchdog.close()
    logger.close()
    print0(
        f"done at step {position.step}: checkpoints in {inputs.save_dir / 'checkpoints'} (resume with "
        f"--from_resume 1), MiniMind weights in {inputs.save_dir / weights_name(args)}, "
        f"metrics in {inputs.save_dir / METRICS_FILE}"
    )
    print0(f"plots and a summary of the run: python -m minimind.report {inputs.save_dir}")
    return position


def eval_settings(args: argparse.Namespace, inputs: RunInputs, engine, eval_windows: PackedWindows | None,
                  device: torch.device) -> EvalSettings:
    """What each evaluation runs: the eval windows and the sample prompts (either may be absent)."""
    samples = (SampleGenerator(engine, inputs.tokenizer, list(inputs.sample_prompts), args.sample_tokens, device)
               if inputs.sample_prompts else None)
    return EvalSettings(windows=eval_windows, samples=samples, interval=args.eval_interval,
                        micro_batch=inputs.batch.micro_batch, max_batches=args.eval_batches, device=device)


def announce_evaluation(args: argparse.Namespace, inputs: RunInputs, eval_windows: PackedWindows | None) -> None:
    """Rank 0 states what each evaluation runs over, and how often."""
    if eval_windows is not None:
        source = (f"{args.eval_fraction:g} of the documents held out of training" if args.eval_fraction
                  else args.eval_data_path)
        batches = eval_batch_count(len(eval_windows), inputs.batch.micro_batch, inputs.batch.data_parallel,
                                   args.eval_batches)
        print0(f"evaluation: {len(eval_windows)} windows ({eval_windows.num_label_tokens:,} target tokens) from "
               f"{source}, {batches} micro-batches per rank every {args.eval_interval} steps and at the end")
    if inputs.sample_prompts:
        print0(f"samples: {len(inputs.sample_prompts)} prompts continued by {args.sample_tokens} tokens at each "
               f"evaluation, into {inputs.save_dir / SAMPLES_FILE}")


def check_inputs(args: argparse.Namespace) -> RunInputs:
    """Every check that can fail on user input, in one place, before the process group exists."""
    accelerator = get_accelerator()
    cpu_only = accelerator.device_name() == "cpu"
    batch_chosen = args.batch_size is not None or args.accumulation_steps is not None
    demo = apply_defaults(args, cpu_only)
    host_notes = (set_cpu_threads(),) if cpu_only else ()
    precision_timed = args.deepspeed_config is None
    if precision_timed:
        host_notes += (choose_cpu_ds_config(args),)
    ds_config, batch = resolve_ds_config(
        args.deepspeed_config,
        data_parallel=world_size(),
        fp16_supported=accelerator.is_fp16_supported(),
        micro_batch=args.batch_size,
        accumulation=args.accumulation_steps,
        grad_clip=args.grad_clip,
        learning_rate=args.learning_rate,
    )
    check_host_optimizer_build(ds_config, args.deepspeed_config)
    save_dir = Path(args.save_dir).resolve()
    check_writable(save_dir)
    refuse_fresh_run_over_checkpoints(save_dir, resuming=bool(args.from_resume or args.resume_from),
                                      overwrite=args.overwrite)
    tokenizer = load_tokenizer(args.tokenizer_path)
    model_config = MiniMindConfig(**model_config_kwargs(args), vocab_size=max(len(tokenizer), 6400))
    if args.max_seq_len > model_config.max_position_embeddings:
        raise ConfigError(f"--max_seq_len {args.max_seq_len} exceeds the model's max_position_embeddings "
                          f"{model_config.max_position_embeddings}")
    device = torch.device(accelerator.device_name(local_device_index()))
    check_kernels_run_on(args.kernels, device)
    if args.use_wandb:
        check_wandb_installed()
    sources = tuple(data_sources(args.data_path)) if args.data_path else ()
    check_mixture_flags(args, sources)
    data_paths = source_files(sources)
    cache_locations = tuple(checked_cache_location(path, tokenizer, args) for path in data_paths)
    eval_cache_location = (checked_cache_location(Path(args.eval_data_path), tokenizer, args)
                           if args.eval_data_path else None)
    sample_prompts = tuple(read_sample_prompts(args.sample_prompts, tokenizer, model_config.max_position_embeddings)
                           if args.sample_prompts else ())
    ep_size = resolve_expert_parallel(ds_config, args.ep_size, model_config, world_size(), args.deepspeed_config)
    host_notes += moe_dispatch_notes(model_config, ep_size, device, precision_of(ds_config))
    inputs = RunInputs(cpu_only, demo, ds_config, batch, save_dir, tokenizer, model_config, data_paths, cache_locations,
                       resume_request(args, save_dir), ep_size,
                       fit_batch_to_corpus=not data_paths and (demo or not batch_chosen), host_notes=host_notes,
                       precision_timed=precision_timed, eval_cache_location=eval_cache_location,
                       sample_prompts=sample_prompts, sources=sources)
    return with_resume(args, inputs)


def check_mixture_flags(args: argparse.Namespace, sources: tuple[DataSource, ...]) -> None:
    """``--mixture_exhaust`` defaults to ``repeat`` for a mixture; given without one, it is a ``ConfigError``."""
    is_mixture = any(source.weight is not None for source in sources)
    if args.mixture_exhaust is not None and not is_mixture:
        raise ConfigError(f"--mixture_exhaust {args.mixture_exhaust} applies to a mixture: give every --data_path "
                          "entry a weight (path:0.3)")
    if args.mixture_exhaust is None:
        args.mixture_exhaust = "repeat"


def checked_cache_location(path: Path, tokenizer, args: argparse.Namespace) -> TokenCacheLocation:
    """The token cache location of the data file ``path`` (read as ``--skip_bad_lines`` and ``--text_field``
    say). Every rank reads a file with no cache yet whole here, so that all reject bad data together (a
    one-line ``DataError``) before the process group starts; a file whose token cache exists was checked
    when it was built."""
    location = token_cache_location(path, tokenizer, skip_bad_lines=args.skip_bad_lines, text_field=args.text_field)
    if not location.built:
        validate_texts(path, skip_bad_lines=args.skip_bad_lines, text_field=args.text_field)
    return location


def check_kernels_run_on(impl: str, device: torch.device) -> None:
    """Raise ``ConfigError`` when ``--kernels impl`` cannot run on ``device`` (``triton`` without
    the package, or on a CPU without ``TRITON_INTERPRET=1``)."""
    try:
        resolve_impl(impl, device)
    except KernelUnavailableError as error:
        raise ConfigError(str(error)) from None


def moe_dispatch_notes(model_config: MiniMindConfig, ep_size: int | None, device: torch.device,
                       precision: str) -> tuple[str, ...]:
    """One line where the MoE layers will run their per-expert loop on a GPU: it reads the experts' token
    counts on the host, a device sync per layer and forward; none for a dense model, AutoEP's layers (their
    own dispatch), CPU ranks (a host read there waits for nothing) or the sync-free grouped GEMMs."""
    if not model_config.use_moe or ep_size is not None or device.type == "cpu":
        return ()
    if grouped_dispatch_planned(model_config, device, PRECISION_DTYPES[precision]):
        return ()
    where = str(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        where += f", compute capability {major}.{minor}"
    return (f"MoE slow path ({precision} on {where}): each MoE layer runs its per-expert loop, a host sync per "
            f"layer (two under activation checkpointing); bf16 is the fast path, sync-free grouped GEMMs, which need "
            f"{SYNC_FREE_ON_GPU} (ds_configs/zero2_bf16.json)",)


def start_process_group(args: argparse.Namespace, inputs: RunInputs) -> None:
    """Join the process group with the collective timeout on this rank's device, check that
    every node sees the same ``--save_dir``, seed every RNG and set the fp32 matmul precision."""
    init_process_group(args.collective_timeout, args.rendezvous_timeout, args.rendezvous_report_interval)
    check_shared(inputs.save_dir)
    deepspeed.runtime.utils.set_random_seed(args.seed)
    if tf32_matmuls(args, inputs, accelerator_device()):
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


def tf32_matmuls(args: argparse.Namespace, inputs: RunInputs, device: torch.device) -> bool:
    """Whether fp32 matmuls run on TF32 tensor cores: fp32 training on CUDA, unless ``--tf32 0``."""
    return bool(args.tf32) and device.type == "cuda" and precision_of(inputs.ds_config) == "fp32"


def announce(args: argparse.Namespace, inputs: RunInputs, world: LaunchedWorld, fit_note: str | None) -> None:
    """Rank 0 states the launcher, the CPU threads and precision (on a CPU-only machine), a MoE model's slow
    path on a GPU, the demonstration settings and the corpus fit (if any), and the resolved batch arithmetic."""
    print0(world.describe())
    for note in inputs.host_notes:
        print0(note)
    if inputs.demo:
        print0(
            f"CPU-only machine: short demonstration run ({', '.join(f'--{k} {v}' for k, v in CPU_DEMO.items())}); "
            "pass --hidden_size 512 --num_hidden_layers 8 --max_seq_len 340 --batch_size 32 "
            "--accumulation_steps 8 --learning_rate 5e-4 for MiniMind's full run"
        )
    if fit_note is not None:
        print0(fit_note)
    batch, ds_config = inputs.batch, inputs.ds_config
    print0(
        f"batch: micro {batch.micro_batch} x accumulation {batch.accumulation} x data-parallel "
        f"{batch.data_parallel} = {batch.global_batch} samples of {args.max_seq_len} tokens per step; "
        f"grad_clip {batch.grad_clip:g}; precision {precision_of(ds_config)}; "
        f"ZeRO stage {ds_config.get('zero_optimization', {}).get('stage', 0)}; config {args.deepspeed_config}"
    )


def load_samples(args: argparse.Namespace, inputs: RunInputs) -> tuple[Dataset, PackedWindows | None]:
    """The token caches (one process per node, or per shared cache folder, builds each; the others wait on
    its file) cut into training samples (packed windows or padded documents; a weighted mixture of them when
    ``--data_path`` gives weights) and the eval windows, if any: ``--eval_data_path``'s file, or the
    documents ``--eval_fraction`` holds out of each source."""
    caches = training_caches(args, inputs)
    if inputs.sources:
        by_path = dict(zip(inputs.data_paths, caches, strict=True))
        corpora = [Corpus.of([by_path[path] for path in source.files]) for source in inputs.sources]
        names = [source.name for source in inputs.sources]
    else:
        corpora, names = [Corpus.of(caches)], [inputs.data_description]
    pieces = [source_samples(args, corpus, name, inputs.tokenizer.pad_token_id)
              for corpus, name in zip(corpora, names, strict=True)]
    eval_windows = None
    if args.eval_fraction:
        held_out = [held for _, held in pieces]
        stream = held_out[0] if len(held_out) == 1 else TokenSpans(held_out, [0] * len(held_out),
                                                                   [len(held) for held in held_out])
        eval_windows = PackedWindows(stream, args.max_seq_len, pad_id=inputs.tokenizer.pad_token_id)
    elif args.eval_data_path:
        eval_cache = build_or_load_token_cache(args.eval_data_path, inputs.tokenizer,
                                               skip_bad_lines=args.skip_bad_lines, workers=tokenize_workers(args),
                                               log=print0, location=inputs.eval_cache_location)
        eval_windows = PackedWindows(eval_cache.tokens, args.max_seq_len, pad_id=inputs.tokenizer.pad_token_id)
    if not inputs.is_mixture:
        return pieces[0][0], eval_windows
    sources = [MixtureSource(source.name, source.weight, samples)
               for source, (samples, _) in zip(inputs.sources, pieces, strict=True)]
    return MixedSamples(sources, exhaust=args.mixture_exhaust, seed=args.seed), eval_windows


def source_samples(args: argparse.Namespace, corpus: Corpus, name: str,
                   pad_id: int) -> tuple[PackedWindows | PaddedDocuments, TokenSpans | None]:
    """One source's training samples and, with ``--eval_fraction``, the tokens of its held-out documents."""
    documents, held_out = None, None
    if args.eval_fraction:
        split = split_held_out(corpus.num_documents, args.eval_fraction, name)
        documents = split.train
        held_out = document_stream(corpus.tokens, corpus.offsets, split.held_out)
    if not args.packing:
        return PaddedDocuments(corpus.tokens, corpus.offsets, args.max_seq_len, pad_id=pad_id,
                               documents=documents), held_out
    stream = corpus.tokens if documents is None else document_stream(corpus.tokens, corpus.offsets, documents)
    return PackedWindows(stream, args.max_seq_len, pad_id=pad_id), held_out


def training_caches(args: argparse.Namespace, inputs: RunInputs) -> list[TokenCache]:
    """The token cache of every training file, in order (the bundled corpus's when none is named).

    Each rank starts with another file (its local rank's turn in the list), so that the ranks of a
    node build different caches at once, then loads the ones the others built. Files still to
    tokenize are spread over ``--tokenize_workers`` processes per rank (0: the rank's share of the
    node's cores), which take work units of every file with all the other ranks' processes.
    """
    if not inputs.data_paths:
        return [build_or_load_token_cache(default_corpus_path(log=print0), inputs.tokenizer,
                                          workers=tokenize_workers(args), log=print0)]
    return build_or_load_token_caches(inputs.data_paths, inputs.tokenizer, skip_bad_lines=args.skip_bad_lines,
                                      workers=tokenize_workers(args), first=local_rank() % len(inputs.data_paths),
                                      log=print0, locations=inputs.cache_locations)


def tokenize_workers(args: argparse.Namespace) -> int:
    """The processes (cores) this rank tokenizes with: ``--tokenize_workers``, or its share of the node's cores."""
    return args.tokenize_workers or cores_per_rank()


def split_held_out(num_documents: int, fraction: float, data: str) -> DocumentSplit:
    """``split_documents``, its refusal (too few documents) as a one-line ``DataError`` naming the data."""
    try:
        return split_documents(num_documents, fraction)
    except ValueError as error:
        raise DataError("--eval_fraction", None, f"{data}: {error}") from None


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
    check_fills_one_global_batch(len(samples), inputs.batch.global_batch, inputs.data_description)
    return inputs, samples, None


def training_data(args: argparse.Namespace, inputs: RunInputs, dataset: Dataset) -> TrainingData:
    """This rank's sampler and loader over ``dataset``, and the number of optimizer steps to train."""
    batch = inputs.batch
    sampler = RankInvariantSampler(
        len(dataset), micro_batch_size=batch.micro_batch, accumulation_steps=batch.accumulation,
        world_size=dist.get_world_size(), rank=dist.get_rank(), seed=args.seed,
    )
    loader = make_data_loader(dataset, sampler, pin_memory=not inputs.cpu_only)
    mixture = dataset if isinstance(dataset, MixedSamples) else None
    print0(f"data: {len(dataset)} {'packed windows' if args.packing else 'padded documents'}"
           f"{f' per epoch, mixed ({EXHAUST_MEANINGS[args.mixture_exhaust]})' if mixture else ''}, "
           f"{sampler.steps_per_epoch} optimizer steps per epoch")
    for line in mixture.describe() if mixture else ():
        print0(line)
    total_steps = sampler.steps_per_epoch * args.epochs
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    return TrainingData(sampler, loader, total_steps, mixture)


def build_engine(args: argparse.Namespace, inputs: RunInputs, total_steps: int):
    """The model and ``deepspeed.initialize``'s engine around it (schedule, AutoEP aux loss,
    checkpoint-write reporting); returns the engine and the parameter count."""
    model = MiniMindForCausalLM(inputs.model_config)
    if args.activation_checkpointing:
        model.activation_checkpointing_enable()
    n_params = sum(p.numel() for p in model.parameters())
    print0(f"model: {n_params / 1e6:.2f}M parameters, hidden {args.hidden_size} x {args.num_hidden_layers} layers"
           f"{' (MoE)' if args.use_moe else ''}, kernels {args.kernels}"
           f"{', activation checkpointing' if args.activation_checkpointing else ''}")
    scheduler = None if "scheduler" in inputs.ds_config else (
        lambda optimizer: minimind_scheduler(optimizer, total_steps, args.warmup_steps)
    )
    ds_config = inputs.ds_config
    if args.compile and inputs.ep_size is not None:  # AutoEP's token exchange stays eager
        ds_config = {**ds_config, "compile": {**ds_config.get("compile", {}), "autoep_non_moe": True}}
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=ds_config, lr_scheduler=scheduler
    )
    if args.compile:
        engine.compile()
        if engine.is_compiled:
            backend = get_accelerator().get_compile_backend()
            print0(f"torch.compile: the model compiles at its first forward ({backend} backend)")
    module_bytes = PRECISION_BYTES[precision_of(inputs.ds_config)]
    warning = disk_space_warning(inputs.save_dir, n_params, module_bytes, args.keep_checkpoints)
    if warning:
        print0(warning)
    if inputs.ep_size is not None:
        install_aux_loss(engine, inputs.model_config)
        print0(f"expert parallelism: AutoEP size {inputs.ep_size}, "
               f"{inputs.model_config.n_routed_experts // inputs.ep_size} routed experts per rank")
    return engine, n_params


def model_dtype(ds_config: dict) -> torch.dtype:
    """The dtype DeepSpeed trains the module in."""
    return PRECISION_DTYPES[precision_of(ds_config)]
