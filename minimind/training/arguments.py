"""Command-line flags of ``pretrain_ds.py`` (MiniMind's names and meanings, plus this project's), and the
``RunConfig`` they resolve to, once (``run_config``).

Size and batch flags default to None so that the run can tell "not given" from "given":
unset batch flags fall back to the DeepSpeed JSON, unset size flags to MiniMind's
defaults (or, on a CPU-only machine, to the short demonstration in ``CPU_DEMO``).
"""

import argparse
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import deepspeed

from minimind.checkpoint.manifest import VERIFY_MODES
from minimind.data import DataSource, data_sources
from minimind.data.mixture import EXHAUST_POLICIES
from minimind.data.pipeline import DataSettings
from minimind.errors import ConfigError
from minimind.flags import POSITIVE, SEED, FlagParser, number_at_least, weight_prefix
from minimind.model.config import FAMILY_DEFAULTS, MODEL_FAMILIES, MiniMindConfig
from minimind.model.packed_attention import PACKED_ATTENTION
from minimind.model.precision import DTYPE_PRECISIONS, precision_of
from minimind.model.presets import PRESETS, preset_config_kwargs
from minimind.training.config import (
    BUNDLED_SAMPLE_PROMPTS,
    CPU_DEMO,
    CPU_DEMO_TRIGGERS,
    DEFAULT_SAVE_WEIGHT,
    MINIMIND_DEFAULTS,
    BatchSection,
    CheckpointSection,
    DistributedSection,
    EvaluationSection,
    HostSection,
    LoggingSection,
    ModelSection,
    RunConfig,
    ScheduleSection,
    StageSection,
)
from minimind.training.ds_config.load import read_ds_config
from minimind.training.hardware.cpu import choose_cpu_precision, cores_per_rank, set_cpu_threads
from minimind.training.run_dir.files import RUN_FOLDERS, RUN_RECORDS
from minimind.training.stages import PRETRAIN, Stage
from minimind_kernels.dispatch import IMPLEMENTATIONS

REPO_ROOT = Path(__file__).resolve().parents[2]
# Without --deepspeed_config a run takes the ZeRO-2 config of its --dtype (MiniMind's default: bfloat16); a
# CPU-only run without --dtype takes the one its processor runs fastest (``cpu_host``).
PRECISION_DS_CONFIGS = {precision: REPO_ROOT / "ds_configs" / f"zero2_{precision}.json"
                        for precision in ("bf16", "fp16", "fp32")}

# Longest wait a timeout flag accepts: beyond it torch's timedelta overflows, and no job waits a month.
MAX_TIMEOUT_S = 30 * 24 * 3600


DATA_PATH_HELP = {
    "documents": "pretraining data: files, globs or folders of JSON Lines (.jsonl, also .gz or .zst compressed) or "
                 "Parquet, concatenated in order (default: bundled corpus); with a weight on every entry "
                 "(web/*.jsonl:0.7 code.parquet:0.3), a mixture in those token shares",
    "conversations": 'one JSON Lines file (also .gz or .zst) of {"conversations": [{"role", "content"}, ...]} '
                     "(MiniMind's SFT format; default: the bundled conversations)",
    "preferences": 'one JSON Lines file (also .gz or .zst) of {"chosen": [turns], "rejected": [turns]} '
                   "(MiniMind's DPO format; default: the bundled preference pairs)",
}


def build_parser(stage: Stage = PRETRAIN) -> argparse.ArgumentParser:
    """The argument parser of ``stage``'s script, with DeepSpeed's ``--deepspeed_config`` added. Every numeric
    flag is range-checked by its ``type``, so a bad value is one line before anything runs."""
    parser = FlagParser(
        prog=stage.script, description=stage.description, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=list(PRESETS), default=None,
                       help="named model size (see minimind/model/presets.py); size flags still override it")
    model.add_argument("--model_family", choices=MODEL_FAMILIES, default=None,
                       help="architecture: minimind2 (default) or minimind3 (per-head q/k norm, MoE without shared "
                            "experts); a preset's family where unset")
    model.add_argument("--hidden_size", type=POSITIVE, default=None,
                       help="model width (MiniMind: 512 in minimind2, 768 in minimind3)")
    model.add_argument("--num_hidden_layers", type=POSITIVE, default=None, help="number of blocks (MiniMind: 8)")
    model.add_argument("--use_moe", type=int, choices=(0, 1), default=None, help="1: MoE MLPs (default 0)")
    model.add_argument("--activation_checkpointing", action="store_true",
                       help="recompute each block in the backward instead of storing its activations")
    model.add_argument("--ep_size", type=POSITIVE, default=None,
                       help="MoE expert-parallel size (DeepSpeed AutoEP); overrides the JSON's expert_parallel")
    model.add_argument("--kernels", choices=IMPLEMENTATIONS, default="auto", help="RMSNorm/RoPE implementation")
    model.add_argument("--packed_attention", choices=PACKED_ATTENTION, default="auto",
                       help="how packed conversations (SFT) keep to themselves: flex (FlexAttention's block mask, no "
                            "(seq, seq) mask built; CUDA only, compiled), mask (a dense block-diagonal mask to SDPA); "
                            "auto: flex on CUDA, mask elsewhere")
    model.add_argument("--use_compile", "--compile", dest="compile", type=int, choices=(0, 1), default=0,
                       help="1: torch.compile the model through DeepSpeed's engine.compile() (with AutoEP: all but "
                            "the expert layers); slower on the project's CPU machine, unmeasured on GPUs")

    data = parser.add_argument_group("data")
    data.add_argument("--data_path", nargs="+", default=None, help=DATA_PATH_HELP[stage.data])
    data.add_argument("--mixture_exhaust", choices=EXHAUST_POLICIES, default=None,
                      help="a mixture's epoch: 'repeat' (the default) reads the source with the most tokens for its "
                           "weight once and repeats the others; 'stop' ends when the first source runs out")
    data.add_argument("--text_field", default="text",
                      help="the JSON field or Parquet column holding each document's text (of --data_path and "
                           "--eval_data_path)")
    data.add_argument("--tokenizer_path", default=None, help="tokenizer folder (default: the shipped one)")
    data.add_argument("--max_seq_len", type=number_at_least(2), default=None, help="tokens per sample (MiniMind: 340)")
    data.add_argument("--packing", type=int, choices=(0, 1), default=None,
                      help="1 (the default): pack documents, or whole conversations each attending only to itself; "
                           "0: one padded document or conversation per row, as MiniMind's datasets (DPO's pairs are "
                           "always padded)")
    data.add_argument("--skip_bad_lines", action="store_true", help="skip malformed JSON lines, counted")
    data.add_argument("--num_workers", type=number_at_least(0), default=0,
                      help="DataLoader worker processes per rank (MiniMind: 8); samples are slices of a memory-mapped "
                           "token cache, so 0 (the rank reads them itself) is usually as fast")
    data.add_argument("--tokenize_workers", type=number_at_least(0), default=0,
                      help="processes (cores) per rank that tokenize data files without a token cache yet (1: the "
                           "rank itself, one thread); 0: the rank's share of the node's cores")

    evaluation = parser.add_argument_group("evaluation (default: off, but on for the bundled corpus)")
    evaluation.add_argument("--eval_data_path", default=None,
                            help="JSON Lines validation file, cut into packed windows like the training data")
    evaluation.add_argument("--eval_fraction", type=number_at_least(0, float, maximum=0.5), default=None,
                            help="hold this share of the training file's documents out of training and validate "
                                 f"on it (the same documents on any number of ranks; bundled corpus: "
                                 f"{stage.bundled_eval_fraction})")
    evaluation.add_argument("--eval_interval", type=POSITIVE, default=None,
                            help="optimizer steps between evaluations (default: --save_interval); one more at the end")
    evaluation.add_argument("--eval_batches", type=number_at_least(0), default=0,
                            help="micro-batches per rank per evaluation; 0: the whole eval set")
    evaluation.add_argument("--sample_prompts", default=None,
                            help="file of prompts (one a line) continued greedily at each evaluation into "
                                 "samples.jsonl; 'default': a few in the bundled corpus's style; 'none': no samples "
                                 "(bundled corpus: default)")
    evaluation.add_argument("--sample_tokens", type=POSITIVE, default=32, help="new tokens per sample")

    optim = parser.add_argument_group("optimisation (unset: taken from the DeepSpeed JSON)")
    optim.add_argument("--batch_size", type=POSITIVE, default=None, help="micro-batch per rank")
    optim.add_argument("--accumulation_steps", type=POSITIVE, default=None, help="micro-steps per optimizer step")
    optim.add_argument("--grad_clip", type=number_at_least(0, float), default=None, help="gradient-norm clipping")
    optim.add_argument("--learning_rate", type=number_at_least(0, float), default=None,
                       help="peak learning rate (MiniMind: 5e-4)")
    optim.add_argument("--warmup_steps", type=number_at_least(0), default=0, help="linear warm-up before the cosine")
    optim.add_argument("--epochs", type=POSITIVE, default=None,
                       help="passes over the data (MiniMind: 1 for minimind2, 2 for minimind3)")
    optim.add_argument("--max_steps", type=POSITIVE, default=None, help="stop after this many optimizer steps")
    optim.add_argument("--seed", type=SEED, default=42)
    if stage.name == "dpo":
        optim.add_argument("--beta", type=number_at_least(0, float), default=None,
                           help="DPO's beta: the strength of the pull towards the reference model (MiniMind: 0.1 for "
                                "minimind2, 0.15 for minimind3)")

    run = parser.add_argument_group("run")
    run.add_argument("--save_dir", default="out",
                     help="weights, and the pretrain stage's checkpoints and metrics, go here (another --save_weight's "
                          "records go in {save_dir}/{save_weight}/)")
    run.add_argument("--save_weight", type=weight_prefix, default=DEFAULT_SAVE_WEIGHT,
                     help="prefix of the published weights, {save_dir}/{save_weight}_{hidden}[_moe].pth; a stage "
                          f"other than {DEFAULT_SAVE_WEIGHT!r} keeps its checkpoints and metrics in "
                          "{save_dir}/{save_weight}/")
    run.add_argument("--from_weight", type=weight_prefix, default="none",
                     help="start from {save_dir}/{from_weight}_{hidden}[_moe].pth with a fresh optimizer and "
                          "schedule (continued pretraining, fine-tuning); 'none': from scratch")
    run.add_argument("--log_interval", type=POSITIVE, default=None, help="optimizer steps between logs (100)")
    run.add_argument("--save_interval", type=POSITIVE, default=None, help="optimizer steps between saves (1000)")
    run.add_argument("--keep_checkpoints", type=POSITIVE, default=3, help="recent checkpoints kept")
    run.add_argument("--from_resume", type=int, choices=(0, 1), default=0, help="1: resume from save_dir")
    run.add_argument("--overwrite", action="store_true",
                     help="start over in a --save_dir that holds an earlier run's checkpoints (they are removed)")
    run.add_argument("--resume_from", default=None, help="checkpoint folder or tag to resume from")
    run.add_argument("--auto_universal", type=int, choices=(0, 1), default=1,
                     help="1: a checkpoint written at another world or ep_size is converted to DeepSpeed's universal "
                          "format once (beside it) and resumed from; 0: refuse, naming the command")
    run.add_argument("--verify_checkpoint", choices=VERIFY_MODES, default="checksum",
                     help="before resuming, check every file of the checkpoint against its manifest: sizes and "
                          "checksums, or sizes only (quick)")
    run.add_argument("--trust_checkpoint", action="store_true",
                     help="unpickle the resumed checkpoint without the weights-only check (runs code from it)")
    run.add_argument("--rendezvous_timeout", type=number_at_least(1, maximum=MAX_TIMEOUT_S), default=7200,
                     help="seconds the ranks wait for each other at start (a node still building its token "
                          "cache arrives late); no collective runs before they all arrive")
    run.add_argument("--rendezvous_report_interval", type=number_at_least(1, maximum=MAX_TIMEOUT_S), default=60,
                     help="seconds between the lines that say, while ranks wait for each other at start, which "
                          "ranks are missing and where the master is")
    run.add_argument("--collective_timeout", type=number_at_least(1, maximum=MAX_TIMEOUT_S), default=600,
                     help="seconds a collective may wait for a dead or stuck rank before the job fails")
    run.add_argument("--max_nonfinite_steps", type=POSITIVE, default=20,
                     help="stop (with a checkpoint of the last good state) after this many consecutive "
                          "optimizer steps skipped for non-finite gradients")
    run.add_argument("--dtype", choices=tuple(DTYPE_PRECISIONS), default=None,
                     help="training precision when no --deepspeed_config is given (MiniMind: bfloat16; a CPU-only "
                          "machine without it times its processor); with a config, it must agree with it")
    run.add_argument("--device", default=None,
                     help="accepted for MiniMind's command lines; under DeepSpeed the launcher gives each rank its "
                          "device (--include/--num_gpus, or DS_ACCELERATOR=cpu for the CPU)")
    run.add_argument("--tf32", type=int, choices=(0, 1), default=1,
                     help="1: fp32 training on CUDA runs its matmuls on TF32 tensor cores; 0: full fp32 matmuls")
    run.add_argument("--use_wandb", action="store_true")
    run.add_argument("--wandb_project", default="MiniMind-Pretrain")
    run.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    deepspeed.add_config_arguments(parser)
    parser.set_defaults(**{name: stage.defaults[name] for name in ("save_weight", "from_weight", "wandb_project")})
    return parser


def parse_args(argv: list[str] | None = None, stage: Stage = PRETRAIN) -> argparse.Namespace:
    """Parse and range-check ``stage``'s flags; a bad flag is a ``ConfigError`` (defaults that depend on the
    machine come from ``run_config``)."""
    return build_parser(stage).parse_args(argv)


def run_config(args: argparse.Namespace, cpu_only: bool, stage: Stage = PRETRAIN) -> RunConfig:
    """The run's config from the parsed flags (left unchanged), every default applied: MiniMind's, the CPU
    demonstration's, a preset's, the bundled corpus's evaluation. On a CPU-only machine this sets torch's
    threads to the rank's share of the cores and, without ``--deepspeed_config``, times the processor to
    choose the precision. A flag that contradicts another is a one-line ``ConfigError``."""
    batch_chosen = args.batch_size is not None or args.accumulation_steps is not None
    flags, demo = resolved_flags(vars(args), cpu_only, stage)
    notes = (set_cpu_threads(),) if cpu_only else ()
    if flags["device"] is not None:
        notes += (f"--device {flags['device']}: under DeepSpeed the launcher gives each rank its device (local rank "
                  "LOCAL_RANK of the accelerator; choose GPUs with --include or --num_gpus, the CPU with "
                  "DS_ACCELERATOR=cpu)",)
    precision_timed = flags["deepspeed_config"] is None
    if precision_timed:
        flags["deepspeed_config"], line = cpu_ds_config(flags)
        notes += (line,)
    if flags["save_weight"] in (*RUN_FOLDERS, *RUN_RECORDS):
        raise ConfigError(f"--save_weight {flags['save_weight']}: a run keeps its own records under "
                          "that name in --save_dir; choose another prefix")
    sources = tuple(data_sources(flags["data_path"])) if flags["data_path"] else ()
    flags["mixture_exhaust"] = mixture_exhaust(flags["mixture_exhaust"], sources)
    return RunConfig(
        model=ModelSection(
            preset=flags["preset"], model_family=flags["model_family"], hidden_size=flags["hidden_size"],
            num_hidden_layers=flags["num_hidden_layers"],
            use_moe=bool(flags["use_moe"]), activation_checkpointing=flags["activation_checkpointing"],
            ep_size=flags["ep_size"], kernels=flags["kernels"], compile=bool(flags["compile"]),
            packed_attention=flags["packed_attention"],
            tokenizer_path=flags["tokenizer_path"], config_kwargs=MappingProxyType(model_config_kwargs(flags))),
        data=DataSettings(
            sources=sources, max_seq_len=flags["max_seq_len"], packing=bool(flags["packing"]),
            eval_fraction=flags["eval_fraction"], eval_data_path=flags["eval_data_path"],
            skip_bad_lines=flags["skip_bad_lines"], text_field=flags["text_field"],
            mixture_exhaust=flags["mixture_exhaust"], seed=flags["seed"],
            tokenize_workers=flags["tokenize_workers"] or cores_per_rank(), loader_workers=flags["num_workers"],
            padded_rows=flags["model_family"]),
        batch=BatchSection(micro_batch=flags["batch_size"], accumulation=flags["accumulation_steps"],
                           grad_clip=flags["grad_clip"], learning_rate=flags["learning_rate"], chosen=batch_chosen),
        schedule=ScheduleSection(epochs=flags["epochs"], max_steps=flags["max_steps"],
                                 warmup_steps=flags["warmup_steps"], seed=flags["seed"]),
        checkpoint=CheckpointSection(
            save_dir=flags["save_dir"], save_weight=flags["save_weight"],
            from_weight=None if flags["from_weight"] == "none" else flags["from_weight"],
            save_interval=flags["save_interval"],
            keep_checkpoints=flags["keep_checkpoints"], from_resume=bool(flags["from_resume"]),
            resume_from=flags["resume_from"], overwrite=flags["overwrite"],
            auto_universal=bool(flags["auto_universal"]),
            verify_checkpoint=flags["verify_checkpoint"], trust_checkpoint=flags["trust_checkpoint"]),
        evaluation=EvaluationSection(interval=flags["eval_interval"], max_batches=flags["eval_batches"],
                                     sample_prompts=flags["sample_prompts"], sample_tokens=flags["sample_tokens"]),
        distributed=DistributedSection(rendezvous_timeout=flags["rendezvous_timeout"],
                                       rendezvous_report_interval=flags["rendezvous_report_interval"],
                                       collective_timeout=flags["collective_timeout"]),
        host=HostSection(cpu_only=cpu_only, deepspeed_config=flags["deepspeed_config"],
                         precision_timed=precision_timed, notes=notes, tf32=bool(flags["tf32"])),
        logging=LoggingSection(log_interval=flags["log_interval"], max_nonfinite_steps=flags["max_nonfinite_steps"],
                               use_wandb=flags["use_wandb"], wandb_project=flags["wandb_project"]),
        demo=demo,
        flags=MappingProxyType(flags),
        stage=StageSection(name=stage.name, beta=flags.get("beta")),
    )


def resolved_flags(parsed: Mapping, cpu_only: bool, stage: Stage = PRETRAIN) -> tuple[dict, bool]:
    """A copy of the ``parsed`` flags with unset size, interval and config flags filled; and whether the CPU
    demo applies.

    The demo applies on a CPU-only machine when none of its model, batch or schedule flags
    was given; any flag given by the user keeps its value. Otherwise the stage's defaults (MiniMind's trainer
    for it) and MiniMind's shared ones fill in. An unset ``--deepspeed_config`` becomes the ZeRO-2 config of
    ``--dtype`` (bf16 where unset) on an accelerator, and on a CPU-only machine where ``--dtype`` is given;
    else ``cpu_ds_config`` picks it. A ``--dtype`` that contradicts the given config is a ``ConfigError``.
    """
    flags = dict(parsed)
    demo = cpu_only and all(flags[name] is None for name in CPU_DEMO_TRIGGERS)
    if demo:
        for name, value in {**CPU_DEMO, **stage.cpu_demo}.items():
            if flags[name] is None:
                flags[name] = value
    if flags["deepspeed_config"] is None and (flags["dtype"] is not None or not cpu_only):
        flags["deepspeed_config"] = str(PRECISION_DS_CONFIGS[DTYPE_PRECISIONS[flags["dtype"] or "bfloat16"]])
    elif flags["dtype"] is not None:
        check_dtype_agrees(flags["dtype"], flags["deepspeed_config"])
    preset = preset_config_kwargs(flags["preset"]) if flags["preset"] else {}
    flags["model_family"] = model_family(flags["model_family"], flags["preset"], preset)
    for name, value in (("hidden_size", preset.get("hidden_size")), ("num_hidden_layers",
                        preset.get("num_hidden_layers")), ("use_moe", int(preset.get("use_moe", False)))):
        if flags[name] is None:
            flags[name] = value
    if flags["hidden_size"] is None:
        flags["hidden_size"] = FAMILY_DEFAULTS[flags["model_family"]]["hidden_size"]
    for name, value in {**MINIMIND_DEFAULTS, **stage.flag_defaults(flags["model_family"])}.items():
        if flags.get(name) is None:
            flags[name] = value
    apply_evaluation_defaults(flags, stage.bundled_eval_fraction)
    check_stage_data_flags(flags, stage)
    return flags, demo


def check_stage_data_flags(flags: dict, stage: Stage) -> None:
    """Resolve ``--packing`` (1, but DPO's pairs are padded) and refuse, in one line, the data flags that mean
    nothing for the stage's data: pretraining's text-file flags for conversations and pairs, packing for pairs."""
    if stage.data != "documents":
        for flag, given in (("skip_bad_lines", flags["skip_bad_lines"]), ("text_field", flags["text_field"] != "text")):
            if given:
                raise ConfigError(f"--{flag} applies to pretraining's text files; {stage.script} reads "
                                  f"{stage.data} (every bad line is refused, naming its file and line)")
    if stage.data == "preferences":
        if flags["packing"]:
            raise ConfigError("--packing 1: DPO's preference pairs are padded rows, as MiniMind's DPODataset makes "
                              "them; drop the flag")
        flags["packing"] = 0
    elif flags["packing"] is None:
        flags["packing"] = 1


def check_dtype_agrees(dtype: str, ds_config_path: str) -> None:
    """Raise ``ConfigError`` when ``--dtype`` names another precision than the DeepSpeed JSON trains in."""
    precision = precision_of(read_ds_config(ds_config_path))
    if DTYPE_PRECISIONS[dtype] != precision:
        raise ConfigError(f"--dtype {dtype} contradicts {ds_config_path}, which trains in {precision}: drop --dtype "
                          "or pass a config in that precision")


def model_family(flag: str | None, preset_name: str | None, preset: Mapping) -> str:
    """``--model_family``, else the preset's family, else minimind2; a flag that contradicts the preset is a
    ``ConfigError``."""
    preset_family = preset.get("model_family", "minimind2")
    if flag is not None and preset_name is not None and flag != preset_family:
        raise ConfigError(f"--model_family {flag}: preset {preset_name} is a {preset_family} model")
    return flag or preset_family


def apply_evaluation_defaults(flags: dict, bundled_eval_fraction: float) -> None:
    """A run on the bundled data holds ``bundled_eval_fraction`` of it out unless it names a validation
    set, and writes samples of the default prompts unless it names prompts; ``--eval_interval`` defaults to
    ``--save_interval``. ``--eval_data_path`` with ``--eval_fraction`` is a ``ConfigError``."""
    if flags["eval_data_path"] is not None and flags["eval_fraction"]:
        raise ConfigError("--eval_data_path and --eval_fraction both name a validation set; pass one")
    if flags["data_path"] is None:
        if flags["eval_data_path"] is None and flags["eval_fraction"] is None:
            flags["eval_fraction"] = bundled_eval_fraction
        if flags["sample_prompts"] is None:
            flags["sample_prompts"] = BUNDLED_SAMPLE_PROMPTS
    if flags["eval_interval"] is None:
        flags["eval_interval"] = flags["save_interval"]


def cpu_ds_config(flags: Mapping) -> tuple[str, str]:
    """On a CPU-only machine without ``--deepspeed_config``: the ZeRO-2 config in the precision this processor
    runs fastest (``cpu_host.choose_cpu_precision``), and the line that says why."""
    config = MiniMindConfig(**{**model_config_kwargs(flags), "kernel_impl": "torch"})
    micro_batch = flags["batch_size"] or read_ds_config(PRECISION_DS_CONFIGS["fp32"])["train_micro_batch_size_per_gpu"]
    choice = choose_cpu_precision(config, micro_batch, flags["max_seq_len"])
    return str(PRECISION_DS_CONFIGS[choice.precision]), (f"precision {choice.precision}: {choice.reason} "
                                                   "(--deepspeed_config chooses another)")


def mixture_exhaust(flag: str | None, sources: tuple[DataSource, ...]) -> str:
    """``--mixture_exhaust``, ``repeat`` where unset; given without a mixture, it is a ``ConfigError``."""
    is_mixture = any(source.weight is not None for source in sources)
    if flag is not None and not is_mixture:
        raise ConfigError(f"--mixture_exhaust {flag} applies to a mixture: give every --data_path "
                          "entry a weight (path:0.3)")
    return "repeat" if flag is None else flag


def model_config_kwargs(flags: Mapping) -> dict:
    """``MiniMindConfig`` arguments from the preset (if any) overridden by the size flags."""
    kwargs = preset_config_kwargs(flags["preset"]) if flags["preset"] else {}
    kwargs.update(model_family=flags["model_family"], hidden_size=flags["hidden_size"],
                  num_hidden_layers=flags["num_hidden_layers"], use_moe=bool(flags["use_moe"]),
                  kernel_impl=flags["kernels"])
    return kwargs
