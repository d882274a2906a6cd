"""bf16 training with fp32 gradient accumulation or fp32 gradient communication: what each costs in
tokens/s and how close each brings the losses to an fp32 run.

    python -m bench.bf16_gradients    # from the repository root; a few minutes on 2 CPU cores

The driver launches one part under DeepSpeed's launcher (2 ranks). The part builds, from one
seed, five engines on the same model: ``ds_configs/zero2_bf16.json`` as shipped (bf16
accumulation and communication), with ``data_types.grad_accum_dtype`` fp32, with
``communication_data_type`` fp32, with both, and ``ds_configs/zero2_fp32.json`` as the
numerics reference. All train the same micro-batches of the bundled corpus (packed), one
optimizer step at a time in rotation (``bench.train_throughput.time_interleaved``), so a busy
machine slows all alike. The table gives each bf16 variant's useful tokens/s against bf16 as
shipped, and its largest and mean relative loss difference from fp32 over the steps.
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from bench.engine import build_engine
from bench.harness import launch
from bench.train_throughput import cpu_model, micro_batches, time_interleaved
from minimind.data import PackedWindows, build_or_load_token_cache, default_corpus_path
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.tokenizer.loader import load_tokenizer
from minimind.training.api import barrier, init_process_group, set_cpu_threads, train_step

REPO_ROOT = Path(__file__).resolve().parents[1]
BF16_CONFIG = REPO_ROOT / "ds_configs" / "zero2_bf16.json"
FP32_CONFIG = REPO_ROOT / "ds_configs" / "zero2_fp32.json"
# Each variant: the keys merged into zero2_bf16.json.
VARIANTS = {
    "bf16 as shipped": {},
    "fp32 accumulation": {"data_types": {"grad_accum_dtype": "fp32"}},
    "fp32 communication": {"communication_data_type": "fp32"},
    "fp32 accumulation + communication": {"data_types": {"grad_accum_dtype": "fp32"},
                                          "communication_data_type": "fp32"},
}
REFERENCE = "fp32 reference"
PART_TIMEOUT_S = 1800


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", action="store_true", help="run as one launched rank (set by the driver)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file the part writes its results to")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_hidden_layers", type=int, default=2)
    parser.add_argument("--max_seq_len", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=4, help="micro-batch per rank")
    parser.add_argument("--accumulation_steps", type=int, default=8)
    parser.add_argument("--warmup_steps", type=int, default=1, help="untimed steps first")
    parser.add_argument("--timed_steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def model_flags(args: argparse.Namespace) -> list[str]:
    """The size, batch and step flags the driver forwards to the part."""
    return [f"--{name}={getattr(args, name)}" for name in (
        "hidden_size", "num_hidden_layers", "max_seq_len", "batch_size", "accumulation_steps", "warmup_steps",
        "timed_steps", "seed")]


def run_driver(args: argparse.Namespace) -> None:
    """Build the token cache, launch the part and print its table."""
    build_or_load_token_cache(default_corpus_path(), load_tokenizer(), log=print)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "bf16_gradients.json"
        launch("bench.bf16_gradients", args.ranks, ["--part", *model_flags(args), "--out", str(out)],
               "bf16_gradients", out, PART_TIMEOUT_S)
        print_report(args, json.loads(out.read_text()))


def print_report(args: argparse.Namespace, result: dict) -> None:
    """The machine, the settings and one row per bf16 variant."""
    print()
    print(f"Machine: {cpu_model()}, {result['threads']} torch thread(s) per rank, {result['ranks']} ranks (gloo); "
          f"model {args.hidden_size} x {args.num_hidden_layers} layers, max_seq_len {args.max_seq_len}, micro-batch "
          f"{args.batch_size} x accumulation {args.accumulation_steps} x {result['ranks']} ranks, ZeRO-2; "
          f"{args.warmup_steps} warm-up + {args.timed_steps} timed steps, median shown")
    print()
    print("| zero2_bf16.json with | useful tokens/s | vs as shipped | max loss diff vs fp32 | mean loss diff vs fp32 |")
    print("|---|---:|---:|---:|---:|")
    runs = result["runs"]
    shipped = runs["bf16 as shipped"]["tokens_per_s"]
    reference = runs[REFERENCE]["losses"]
    for name, run in runs.items():
        differences = [abs(a - b) / b for a, b in zip(run["losses"], reference, strict=True)]
        print(f"| {name} | {run['tokens_per_s']:,.0f} | {run['tokens_per_s'] / shipped:.2f}x | "
              f"{max(differences):.2e} | {statistics.mean(differences):.2e} |")


def variant_config(name: str, folder: Path) -> Path:
    """``zero2_bf16.json`` with the variant's keys merged in, written to ``folder``."""
    config = json.loads(BF16_CONFIG.read_text())
    for key, value in VARIANTS[name].items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = folder / f"{name.replace(' ', '_').replace('+', 'and')}.json"
    path.write_text(json.dumps(config))
    return path


def run_part(args: argparse.Namespace) -> None:
    """Build the five engines on this rank, time them in rotation; rank 0 writes the results."""
    init_process_group()
    set_cpu_threads()
    device = torch.device(get_accelerator().current_device_name())
    tokenizer = load_tokenizer()
    cache = build_or_load_token_cache(default_corpus_path(show_progress=False), tokenizer, show_progress=False)
    config = MiniMindConfig(hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                            vocab_size=max(len(tokenizer), 6400))
    packed = PackedWindows(cache.tokens, args.max_seq_len, pad_id=tokenizer.pad_token_id)
    steps = args.warmup_steps + args.timed_steps
    batches = {"packed": micro_batches(packed, args.batch_size, args.accumulation_steps, steps, args.seed)}
    with tempfile.TemporaryDirectory() as folder:
        configs = {name: variant_config(name, Path(folder)) for name in VARIANTS} | {REFERENCE: FP32_CONFIG}
        step_functions = {}
        for name, path in configs.items():
            torch.manual_seed(args.seed)
            engine, _, _ = build_engine(path, dist.get_world_size(), MiniMindForCausalLM(config).to(device),
                                        args.batch_size, args.accumulation_steps)
            step_functions[name] = lambda micro, engine=engine: train_step(engine, micro, device)
        runs = time_interleaved(step_functions, batches, args.warmup_steps)
    result = {"ranks": dist.get_world_size(), "threads": torch.get_num_threads(),
              "runs": {run.name: {"tokens_per_s": run.tokens_per_s, "losses": run.losses} for run in runs}}
    if dist.get_rank() == 0 and args.out is not None:
        args.out.write_text(json.dumps(result))
    barrier()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.part:
        run_part(args)
    else:
        run_driver(args)


if __name__ == "__main__":
    main()
