"""How close ``python -m minimind.plan`` comes to the measured peak memory of real CPU runs.

    python -m bench.plan_accuracy    # from the repository root; about 3-4 minutes on 2 busy CPU cores

For each case (a model size, 1 or 2 ranks, a precision, checkpointing on or off) the driver
starts DeepSpeed's launcher once::

    deepspeed --num_gpus R --module bench.plan_accuracy --part measure --hidden_size H ... --out case.json

Each rank measures its process's resident set: just before the model is built (after the
imports, the process group and the data) and its high-water mark (``ru_maxrss``) after a
few optimizer steps of ``minimind.training.api.train_step`` on an engine from
``deepspeed.initialize`` with a config from ``resolve_ds_config`` (``--ds_config``, ZeRO
stage as given). Measured = peak RSS - RSS before the model, the largest rank's: on the CPU
accelerator everything a GPU would hold (model states, activations) is host memory, and the
difference removes the interpreter, the libraries and the gloo buffers, which the plan does
not count. ``see_memory_usage`` was not used: on CPU it reports system-wide virtual memory,
not this process.

The plan is ``minimind.plan.plan_memory`` for the same model, ranks, ZeRO stage, precision,
micro-batch and sequence length, without its reserve. The table gives both and the error
``(plan - measured) / measured``. Data are random token ids (memory does not depend on them).

A first run of a 64 x 1 model on 1 x 8 tokens (plan: under 3 MiB) measures the runtime's own
growth, model or not (oneDNN/MKL workspaces, allocator caches, engine bookkeeping: on a GPU
the plan's reserve stands for its like). The last column is the error against the
measurement minus that floor.
"""

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from bench.engine import build_engine
from bench.harness import launch
from minimind.model import MiniMindForCausalLM
from minimind.model.precision import precision_of
from minimind.plan import PlanSettings, model_config, plan_memory
from minimind.training.api import all_gather_object, barrier, init_process_group, train_step

REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
PART_TIMEOUT_S = 300
EXIT_GRACE_S = 30
# The runtime's own growth, model or not (oneDNN/MKL workspaces, allocator caches, the
# engine's bookkeeping): a 64 x 1 model on 1 x 8 tokens, whose plan is under 3 MiB.
FLOOR_CASE = ("floor 64x1", None, 64, 1, 1, "zero2_fp32.json", False)
CASES = (  # (name, preset, hidden, layers, ranks, config, activation checkpointing)
    ("256x4", None, 256, 4, 1, "zero2_fp32.json", False),
    ("256x4", None, 256, 4, 2, "zero2_fp32.json", False),
    ("26m", "26m", None, None, 1, "zero2_fp32.json", False),
    ("26m", "26m", None, None, 2, "zero2_fp32.json", False),
    ("26m", "26m", None, None, 1, "zero2_fp32.json", True),
    ("26m", "26m", None, None, 1, "zero2_bf16.json", False),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "measure"), default="all")
    parser.add_argument("--out", type=Path, default=None, help="JSON file a measure part writes")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--hidden_size", type=int, default=None)
    parser.add_argument("--num_hidden_layers", type=int, default=None)
    parser.add_argument("--ds_config", default="zero2_fp32.json", help="file name under ds_configs/")
    parser.add_argument("--zero", type=int, default=2)
    parser.add_argument("--activation_checkpointing", action="store_true")
    parser.add_argument("--micro_batch", type=int, default=4)
    parser.add_argument("--max_seq_len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps measured")
    parser.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)  # set by the launcher
    return parser.parse_args(argv)


def run_driver(args: argparse.Namespace) -> None:
    """Launch every case, then print the plan against the measurement."""
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for index, (name, preset, hidden, layers, ranks, config, checkpointing) in enumerate((FLOOR_CASE, *CASES)):
            out = Path(folder) / f"case{index}.json"
            micro, seq = (1, 8) if index == 0 else (args.micro_batch, args.max_seq_len)
            part = ["--part", "measure", "--out", str(out), "--ds_config", config, "--zero", str(args.zero),
                    "--micro_batch", str(micro), "--max_seq_len", str(seq), "--steps", str(args.steps)]
            for flag, value in (("--preset", preset), ("--hidden_size", hidden), ("--num_hidden_layers", layers)):
                if value is not None:
                    part += [flag, str(value)]
            if checkpointing:
                part.append("--activation_checkpointing")
            launch("bench.plan_accuracy", ranks, part, name, out, PART_TIMEOUT_S, EXIT_GRACE_S)
            measured = json.loads(out.read_text())
            rows.append((name, ranks, checkpointing, measured))
    _, _, _, floor_run = rows[0]
    floor = growth_bytes(floor_run) - floor_run["plan"]["total"]
    print()
    print(f"Micro-batch {args.micro_batch} x {args.max_seq_len} tokens, ZeRO-{args.zero}, {args.steps} optimizer "
          f"steps; measured = peak RSS - RSS before the model (largest rank); runtime floor (the 64x1 run's "
          f"measured - planned) {floor / MIB:,.0f} MiB; total {time.perf_counter() - started:.0f} s")
    print()
    print("| model | params | ranks | precision | act. ckpt | planned states + buckets (MiB) | "
          "planned activations (MiB) | planned total (MiB) | measured (MiB) | error | error vs measured - floor |")
    print("|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for name, ranks, checkpointing, measured in rows[1:]:
        plan = measured["plan"]
        growth = growth_bytes(measured)
        above_floor = growth - floor
        print(f"| {name} | {measured['parameters'] / 1e6:.2f}M | {ranks} | {measured['precision']} | "
              f"{'on' if checkpointing else 'off'} | {(plan['total'] - plan['activations']) / MIB:,.0f} | "
              f"{plan['activations'] / MIB:,.0f} | {plan['total'] / MIB:,.0f} | {growth / MIB:,.0f} | "
              f"{(plan['total'] - growth) / growth:+.1%} | {(plan['total'] - above_floor) / above_floor:+.1%} |")


def growth_bytes(measured: dict) -> int:
    """The largest rank's peak RSS minus its RSS before the model was built."""
    return max(rank["peak_rss_bytes"] - rank["rss_before_model_bytes"] for rank in measured["ranks"])


def run_measure(args: argparse.Namespace) -> None:
    """One rank: build, initialize, train ``--steps`` steps, gather the RSS figures; rank 0 writes them."""
    init_process_group()
    torch.set_num_threads(1)
    device = torch.device(get_accelerator().current_device_name())
    world = dist.get_world_size()
    config = model_config(args.preset, hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers)
    generator = torch.Generator().manual_seed(dist.get_rank())
    batches = []
    for _ in range(args.steps):
        tokens = torch.randint(0, config.vocab_size, (args.micro_batch, args.max_seq_len), generator=generator)
        batches.append([{"input_ids": tokens, "targets": tokens.clone()}])  # (batch, seq)

    rss_before_model = current_rss_bytes()
    model = MiniMindForCausalLM(config)
    if args.activation_checkpointing:
        model.activation_checkpointing_enable()
    engine, ds_config, _ = build_engine(REPO_ROOT / "ds_configs" / args.ds_config, world, model, args.micro_batch, 1,
                                        zero_stage=args.zero)
    for micro in batches:
        train_step(engine, micro, device)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    ranks = all_gather_object({"peak_rss_bytes": peak_rss, "rss_before_model_bytes": rss_before_model})
    precision = precision_of(ds_config)
    plan = plan_memory(config, PlanSettings(
        world_size=world, zero=args.zero, micro_batch=args.micro_batch, max_seq_len=args.max_seq_len,
        precision=precision, activation_checkpointing=args.activation_checkpointing))
    if dist.get_rank() == 0 and args.out is not None:
        result = {"parameters": plan.parameters.total, "precision": precision, "ranks": ranks,
                  "plan": {"states": plan.model_state_bytes, "activations": plan.activation_bytes,
                           "total": plan.total_bytes}}
        partial = args.out.with_name(args.out.name + ".partial")
        partial.write_text(json.dumps(result, indent=1))
        partial.replace(args.out)
    barrier()


def current_rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc/self/statm``)."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    args = parse_args()
    if args.part == "all":
        run_driver(args)
    else:
        run_measure(args)


if __name__ == "__main__":
    main()
