"""MoE training throughput and per-rank memory: expert parallelism (AutoEP) size 2 vs 1 vs the plain MoE.

    python -m bench.moe_expert_parallel          # from the repository root; a few minutes on 2 CPU cores

The driver starts DeepSpeed's launcher once per variant, 2 ranks each, so that each variant's
peak RSS is its own::

    deepspeed --num_gpus 2 --module bench.moe_expert_parallel --variant ep2 --out ep2.json

and prints a markdown table with the ratios to ``ep1``. The variants train the same MoE
model (MiniMind's 145M MoE preset layout, 4 routed experts top-2 plus 1 shared, at a smaller
width and depth) from one seed on the same random-token micro-batches, with
``ds_configs/zero2_fp32.json`` (ZeRO-2, fp32) and ``minimind.training.api.train_step``:

- ``plain``: no expert parallelism, the project's MoE layer (grouped GEMMs over experts sorted on the device);
- ``ep1``: AutoEP at size 1: every rank holds all experts, no all-to-all;
- ``ep2``: AutoEP at size 2: each rank holds 2 of the 4 experts, tokens go to their
  experts' rank and back by all-to-all (the cost this measures).

A step's time is the slowest rank's, after untimed warm-up steps; the table gives the median.
Memory per rank: bytes of the module's parameters, of the optimizer's fp32 partitions and of
its state (Adam moments), each storage counted once, and the process RSS high-water mark.
"""

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from bench.engine import build_engine
from bench.harness import REPO_ROOT, launch
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.training.api import (
    all_gather,
    all_reduce,
    barrier,
    init_process_group,
    print0,
    set_cpu_threads,
    train_step,
)

DS_CONFIG = REPO_ROOT / "ds_configs" / "zero2_fp32.json"
VARIANTS = {"plain": None, "ep1": 1, "ep2": 2}
MIB = 2**20
VARIANT_TIMEOUT_S = 1800


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=("all", *VARIANTS), default="all",
                        help="all: the driver, which launches each variant under DeepSpeed's launcher")
    parser.add_argument("--out", type=Path, default=None, help="JSON file a variant writes its results to")
    parser.add_argument("--hidden_size", type=int, default=256, help="145M preset: 640")
    parser.add_argument("--num_hidden_layers", type=int, default=4, help="145M preset: 8")
    parser.add_argument("--max_seq_len", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=4, help="micro-batch per rank")
    parser.add_argument("--accumulation_steps", type=int, default=1)
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--timed_steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)  # set by the launcher
    return parser.parse_args(argv)


def run_driver(args: argparse.Namespace) -> None:
    """Launch every variant on 2 ranks and print the table."""
    forwarded = ["--hidden_size", str(args.hidden_size), "--num_hidden_layers", str(args.num_hidden_layers),
                 "--max_seq_len", str(args.max_seq_len), "--batch_size", str(args.batch_size),
                 "--accumulation_steps", str(args.accumulation_steps), "--warmup_steps", str(args.warmup_steps),
                 "--timed_steps", str(args.timed_steps), "--seed", str(args.seed)]
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for variant in VARIANTS:
            out = Path(folder) / f"{variant}.json"
            launch("bench.moe_expert_parallel", 2, ["--variant", variant, "--out", str(out), *forwarded], variant, out,
                   VARIANT_TIMEOUT_S)
            results[variant] = json.loads(out.read_text())
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    print_report(args, results, load_before, load_after)


def print_report(args, results: dict, load_before: list[str], load_after: list[str]) -> None:
    first = results["ep1"]
    print()
    print(f"Machine: {os.cpu_count()} logical cores ({len(os.sched_getaffinity(0))} usable), torch "
          f"{torch.__version__}, 2 ranks (gloo); load average {' '.join(load_before)} before, "
          f"{' '.join(load_after)} after")
    print(f"Model: hidden {args.hidden_size} x {args.num_hidden_layers} layers, 4 routed experts top-2 + 1 shared, "
          f"{first['parameters'] / 1e6:.2f}M parameters; max_seq_len {args.max_seq_len}, micro-batch "
          f"{args.batch_size} x accumulation {args.accumulation_steps} x 2 ranks; ZeRO-2 fp32; "
          f"{args.warmup_steps} warm-up + {args.timed_steps} timed steps, median")
    print()
    print("| variant | median step (s) | tokens/s | vs ep1 | params / rank (MiB) | optimizer fp32 + state / rank (MiB) "
          "| peak RSS / rank (MiB) | loss after timed steps |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant, result in results.items():
        ratio = result["tokens_per_s"] / first["tokens_per_s"]
        print(f"| {variant} | {result['median_step_s']:.3f} | {result['tokens_per_s']:,.0f} | {ratio:.2f}x | "
              f"{max(result['param_bytes']) / MIB:.1f} | {max(result['optimizer_bytes']) / MIB:.1f} | "
              f"{max(result['peak_rss_bytes']) / MIB:.0f} | {result['final_loss']:.4f} |")


def run_variant(args: argparse.Namespace) -> None:
    """Train one variant on this rank; rank 0 writes the results."""
    init_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    set_cpu_threads()
    model_config = MiniMindConfig(hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                                  use_moe=True, kernel_impl="torch")
    torch.manual_seed(args.seed)
    model = MiniMindForCausalLM(model_config)
    parameters = sum(p.numel() for p in model.parameters())
    engine, _, batch = build_engine(DS_CONFIG, world, model, args.batch_size, args.accumulation_steps,
                                    ep_size=VARIANTS[args.variant])
    generator = torch.Generator().manual_seed(args.seed + 1)
    device = torch.device(get_accelerator().current_device_name())
    step_seconds, loss = [], float("nan")
    for step in range(args.warmup_steps + args.timed_steps):
        micro_batches = []
        for _ in range(args.accumulation_steps):
            # the same global batch in every variant: draw all ranks' rows, keep this rank's
            rows = torch.randint(0, model_config.vocab_size, (world, args.batch_size, args.max_seq_len + 1),
                                 generator=generator)[rank]
            micro_batches.append({"input_ids": rows[:, :-1], "targets": rows[:, 1:]})
        barrier()
        started = time.perf_counter()
        result = train_step(engine, micro_batches, device)
        elapsed = all_reduce(torch.tensor([time.perf_counter() - started]), op=dist.ReduceOp.MAX)
        if step >= args.warmup_steps:
            step_seconds.append(elapsed.item())
        loss = result.loss
    memory = torch.tensor([module_param_bytes(engine.module), optimizer_bytes(engine.optimizer),
                           resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024], dtype=torch.float64)
    gathered = [part.cpu() for part in all_gather(memory)]
    median = statistics.median(step_seconds)
    tokens = batch.global_batch * args.max_seq_len
    results = {"parameters": parameters, "median_step_s": median, "tokens_per_s": tokens / median,
               "param_bytes": [int(g[0]) for g in gathered], "optimizer_bytes": [int(g[1]) for g in gathered],
               "peak_rss_bytes": [int(g[2]) for g in gathered], "final_loss": loss}
    if rank == 0:
        args.out.write_text(json.dumps(results))
    print0(f"{args.variant}: {results}")
    barrier()


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen = {}
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.numel():
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def module_param_bytes(module: torch.nn.Module) -> int:
    return storage_bytes(module.parameters())


def optimizer_bytes(optimizer) -> int:
    """The ZeRO optimizer's fp32 partitions and its inner optimizer's state, each storage once."""
    inner = optimizer.optimizer
    tensors = [p for group in inner.param_groups for p in group["params"]]
    tensors += [value for state in inner.state.values() for value in state.values()]
    return storage_bytes(tensors)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.variant == "all":
        run_driver(args)
    else:
        run_variant(args)


if __name__ == "__main__":
    main()
