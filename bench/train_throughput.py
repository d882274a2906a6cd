"""Training throughput and memory: DeepSpeed step vs plain PyTorch, packing vs padding, ZeRO-2 vs ZeRO-0.

    python -m bench.train_throughput    # from the repository root; 3-4 minutes on 2 CPU cores, more if busy

The driver builds the default corpus and its token cache if needed, then starts DeepSpeed's
launcher three times, 2 ranks each, one part per launch (so each part's peak RSS is its own)::

    deepspeed --num_gpus 2 --module bench.train_throughput --part throughput --out throughput.json
    deepspeed --num_gpus 2 --module bench.train_throughput --part memory --stage 0 --out zero0.json
    deepspeed --num_gpus 2 --module bench.train_throughput --part memory --stage 2 --out zero2.json

and prints markdown tables with the machine, the figures and the ratios. Every part trains the
same model on the same micro-batches of the bundled corpus (``minimind.data.default_corpus_path()``,
shipped tokenizer) with the batch arithmetic and AdamW settings of ``--ds_config`` (an fp32
config: the plain loop has no mixed precision to match bf16 with).

``throughput`` builds, from one seed, a DeepSpeed engine (``--ds_config``, ZeRO-2) driven by
``minimind.training.api.train_step`` and a plain PyTorch copy (DDP, ``torch.optim.AdamW`` with
the config's hyper-parameters, the same loss normalisation and gradient clipping), and trains
both on packed windows (``PackedWindows``) and on MiniMind's padded rows (``PaddedDocuments``),
interleaved step by step so that a busy machine slows all four alike. Warm-up rounds are not
timed; a step's time is the slowest rank's, and the table gives the median. Useful tokens are
non-padding targets, summed over ranks. The two implementations' losses are compared as a check
that they train the same thing.

``memory`` trains the engine at ZeRO stage ``--stage`` (the config's ``zero_optimization.stage``
overridden) and reports per rank the process RSS high-water mark (``ru_maxrss``), the RSS just
before the model is built (after the imports and the data) and just after ``deepspeed.initialize``,
and the bytes the engine's optimizer holds when its inner optimizer steps: parameters (module and
optimizer's own copies, each storage counted once), gradients and optimizer state.
"""

import argparse
import contextlib
import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from torch import nn

from bench.engine import build_engine, plain_adamw
from bench.harness import launch
from minimind.data import (
    IGNORE_INDEX,
    PackedWindows,
    PaddedDocuments,
    RankInvariantSampler,
    build_or_load_token_cache,
    default_corpus_path,
    make_data_loader,
)
from minimind.data.pipeline import take
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.model.loss import token_cross_entropy
from minimind.model.precision import precision_of
from minimind.tokenizer import load_tokenizer
from minimind.training.api import (
    StepResult,
    all_gather_object,
    all_reduce,
    barrier,
    init_process_group,
    print0,
    set_cpu_threads,
    train_step,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DS_CONFIG = REPO_ROOT / "ds_configs" / "zero2_fp32.json"
MIB = 2**20
EXIT_GRACE_S = 60  # how long a launch may take to exit once its results are written
PART_TIMEOUT_S = 900


@dataclass
class TimedRun:
    """One (implementation, data) pair's timed optimizer steps."""

    name: str
    data: str
    seconds: list[float]  # per step, slowest rank
    target_tokens: int  # useful tokens per step, all ranks (the same batches every step count)
    row_positions: int  # input positions per step, all ranks, padding included
    losses: list[float]

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def tokens_per_s(self) -> float:
        return self.target_tokens / self.median_seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "throughput", "memory"), default="all",
                        help="all: the driver, which launches the other parts under DeepSpeed's launcher")
    parser.add_argument("--stage", type=int, default=2, help="ZeRO stage of the memory part")
    parser.add_argument("--out", type=Path, default=None, help="JSON file a part writes its results to")
    parser.add_argument("--ds_config", type=Path, default=DEFAULT_DS_CONFIG)
    parser.add_argument("--ranks", type=int, default=2, help="ranks per launch (driver only)")
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--num_hidden_layers", type=int, default=4)
    parser.add_argument("--max_seq_len", type=int, default=340)
    parser.add_argument("--batch_size", type=int, default=4, help="micro-batch per rank")
    parser.add_argument("--accumulation_steps", type=int, default=2)
    parser.add_argument("--warmup_steps", type=int, default=1, help="untimed steps first")
    parser.add_argument("--timed_steps", type=int, default=4, help="timed steps of the throughput part")
    parser.add_argument("--memory_timed_steps", type=int, default=2, help="timed steps of each memory part")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per rank (default: usable cores / ranks on this node)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)  # set by the launcher
    return parser.parse_args(argv)


# The driver: one process, no torch.distributed.


def run_driver(args: argparse.Namespace) -> None:
    """Build the data once, run the three parts under DeepSpeed's launcher and print the tables."""
    tokenizer = load_tokenizer()
    build_or_load_token_cache(default_corpus_path(), tokenizer, log=print)
    forwarded = [
        "--ds_config", str(args.ds_config.resolve()), "--hidden_size", str(args.hidden_size),
        "--num_hidden_layers", str(args.num_hidden_layers), "--max_seq_len", str(args.max_seq_len),
        "--batch_size", str(args.batch_size), "--accumulation_steps", str(args.accumulation_steps),
        "--warmup_steps", str(args.warmup_steps), "--seed", str(args.seed),
    ]
    if args.threads is not None:
        forwarded += ["--threads", str(args.threads)]
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        parts = {
            "throughput": ["--part", "throughput", "--timed_steps", str(args.timed_steps)],
            "zero0": ["--part", "memory", "--stage", "0", "--timed_steps", str(args.memory_timed_steps)],
            "zero2": ["--part", "memory", "--stage", "2", "--timed_steps", str(args.memory_timed_steps)],
        }
        results = {}
        for name, part_args in parts.items():
            out = Path(folder) / f"{name}.json"
            launch("bench.train_throughput", args.ranks, [*part_args, *forwarded, "--out", str(out)], name, out,
                   PART_TIMEOUT_S, EXIT_GRACE_S)
            results[name] = json.loads(out.read_text())
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    print_report(args, results, load_before, load_after, time.perf_counter() - started)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def print_report(args, results: dict, load_before: list[str], load_after: list[str], seconds: float) -> None:
    """Print the machine, the settings and the three comparisons as markdown."""
    throughput = results["throughput"]
    settings = throughput["settings"]
    print()
    print(f"Machine: {cpu_model()}, {os.cpu_count()} logical cores ({len(os.sched_getaffinity(0))} usable), "
          f"torch {torch.__version__}, {settings['threads']} torch thread(s) per rank; "
          f"load average {' '.join(load_before)} before, {' '.join(load_after)} after; total {seconds:.0f} s")
    print(f"Setup: {settings['ranks']} ranks (gloo), {settings['config']} (ZeRO-{settings['stage']}), model hidden "
          f"{args.hidden_size} x {args.num_hidden_layers} layers = {settings['parameters'] / 1e6:.2f}M parameters, "
          f"max_seq_len {args.max_seq_len}, micro-batch {args.batch_size} x accumulation {args.accumulation_steps} x "
          f"{settings['ranks']} ranks = {settings['global_batch']} rows per step; {args.warmup_steps} warm-up + "
          f"{args.timed_steps} timed steps per row, median shown")
    print()
    print("| implementation | data | median step (s) | min-max step (s) | useful tokens / step | useful tokens/s | "
          "row positions/s | useful share |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    runs = {(run["name"], run["data"]): TimedRun(**run) for run in throughput["runs"]}
    labels = {"deepspeed": f"DeepSpeed engine, ZeRO-{settings['stage']} (`train_step`)",
              "pytorch": "plain PyTorch (DDP + `torch.optim.AdamW`)"}
    data_labels = {"packed": "packed (`PackedWindows`)", "padded": "padded (`PaddedDocuments`)"}
    for run in runs.values():
        print(f"| {labels[run.name]} | {data_labels[run.data]} | {run.median_seconds:.3f} | "
              f"{min(run.seconds):.3f}-{max(run.seconds):.3f} | {run.target_tokens} | "
              f"{run.tokens_per_s:,.0f} | {run.row_positions / run.median_seconds:,.0f} | "
              f"{run.target_tokens / run.row_positions:.1%} |")
    engine, plain = runs[("deepspeed", "packed")], runs[("pytorch", "packed")]
    padded = runs[("deepspeed", "padded")]
    print()
    print(f"- engine overhead (packed): plain PyTorch / DeepSpeed useful tokens/s = "
          f"**{plain.tokens_per_s / engine.tokens_per_s:.3f}x** "
          f"(padded: {runs[('pytorch', 'padded')].tokens_per_s / padded.tokens_per_s:.3f}x)")
    print(f"- packing gain (DeepSpeed): packed / padded useful tokens/s = "
          f"**{engine.tokens_per_s / padded.tokens_per_s:.2f}x** "
          f"(plain PyTorch: {plain.tokens_per_s / runs[('pytorch', 'padded')].tokens_per_s:.2f}x)")
    print(f"- same training: largest |loss difference| DeepSpeed vs PyTorch over {len(engine.losses)} "
          f"steps per data = {throughput['max_loss_difference']:.2e} (first loss {engine.losses[0]:.4f})")
    print()
    print("| ZeRO stage | rank | peak RSS (MiB) | RSS before model (MiB) | RSS after `deepspeed.initialize` (MiB) | "
          "peak - before model (MiB) | module params (MiB) | "
          "optimizer's param copies (MiB) | gradients (MiB) | optimizer state (MiB) | counted total (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in ("zero0", "zero2"):
        for rank, memory in enumerate(results[name]["ranks"]):
            counted = memory["counted"]
            print(f"| {results[name]['stage']} | {rank} | {memory['peak_rss_bytes'] / MIB:,.0f} | "
                  f"{memory['rss_before_model_bytes'] / MIB:,.0f} | "
                  f"{memory['rss_after_initialize_bytes'] / MIB:,.0f} | {rss_growth(memory) / MIB:,.0f} | "
                  f"{counted['module_params'] / MIB:.1f} | {counted['optimizer_param_copies'] / MIB:.1f} | "
                  f"{counted['gradients'] / MIB:.1f} | {counted['optimizer_state'] / MIB:.1f} | "
                  f"{sum(counted.values()) / MIB:.1f} |")
    zero0, zero2 = results["zero0"]["ranks"], results["zero2"]["ranks"]
    peak0, peak2 = (max(rank["peak_rss_bytes"] for rank in ranks) for ranks in (zero0, zero2))
    growth0, growth2 = (max(rss_growth(rank) for rank in ranks) for ranks in (zero0, zero2))
    counted0, counted2 = (max(sum(rank["counted"].values()) for rank in ranks) for ranks in (zero0, zero2))
    print()
    print(f"- ZeRO-2 / ZeRO-0, largest rank: peak RSS **{peak2 / peak0:.3f}x** ({(peak2 - peak0) / MIB:+,.0f} MiB); "
          f"RSS growth over the pre-model baseline **{growth2 / growth0:.2f}x**; counted parameter + gradient + "
          f"optimizer-state bytes **{counted2 / counted0:.3f}x** ({(counted2 - counted0) / MIB:+,.1f} MiB)")
    print(f"- engine useful tokens/s in the memory launches ({args.memory_timed_steps} timed steps each, not "
          f"interleaved, so noisier): ZeRO-0 {results['zero0']['tokens_per_s']:,.0f}, "
          f"ZeRO-2 {results['zero2']['tokens_per_s']:,.0f}")


def rss_growth(memory: dict) -> int:
    return memory["peak_rss_bytes"] - memory["rss_before_model_bytes"]


# The parts: one process per rank, started by DeepSpeed's launcher.


def run_part(args: argparse.Namespace) -> None:
    """Run the throughput or memory part on this rank; rank 0 writes the results to ``--out``."""
    init_process_group()
    if args.threads:
        torch.set_num_threads(args.threads)
    else:
        set_cpu_threads()
    device = torch.device(get_accelerator().current_device_name())
    tokenizer = load_tokenizer()
    cache = build_or_load_token_cache(default_corpus_path(show_progress=False), tokenizer, show_progress=False,
                                      log=print0)
    model_config = MiniMindConfig(hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
                                  vocab_size=max(len(tokenizer), 6400))
    steps = args.warmup_steps + args.timed_steps
    packed = PackedWindows(cache.tokens, args.max_seq_len, pad_id=tokenizer.pad_token_id)
    batches = {"packed": micro_batches(packed, args.batch_size, args.accumulation_steps, steps, args.seed)}

    rss_before_model = current_rss_bytes()

    def build_model() -> MiniMindForCausalLM:
        torch.manual_seed(args.seed)
        return MiniMindForCausalLM(model_config).to(device)

    model = build_model()
    engine, ds_config, batch = build_engine(args.ds_config, dist.get_world_size(), model, args.batch_size,
                                            args.accumulation_steps,
                                            zero_stage=args.stage if args.part == "memory" else None)
    rss_after_initialize = current_rss_bytes()
    result = {
        "settings": {
            "ranks": dist.get_world_size(), "threads": torch.get_num_threads(),
            "config": args.ds_config.name, "parameters": sum(p.numel() for p in model.parameters()),
            "global_batch": batch.global_batch, "stage": ds_config.get("zero_optimization", {}).get("stage", 0),
        },
    }

    def engine_step(micro: list[dict]) -> StepResult:
        return train_step(engine, micro, device)

    if args.part == "throughput":
        padded = PaddedDocuments(cache.tokens, cache.offsets, args.max_seq_len, pad_id=tokenizer.pad_token_id)
        batches["padded"] = micro_batches(padded, args.batch_size, args.accumulation_steps, steps, args.seed)
        plain_step = make_plain_step(build_model(), ds_config, batch.grad_clip, device)
        runs = time_interleaved({"deepspeed": engine_step, "pytorch": plain_step}, batches, args.warmup_steps)
        result["runs"] = [asdict(run) for run in runs]
        result["max_loss_difference"] = max(
            abs(a - b)
            for data in batches
            for a, b in zip(*(run.losses for run in runs if run.data == data), strict=True)
        )
    else:
        counted: dict[str, int] = {}
        hook = inner_optimizer(engine).register_step_post_hook(
            lambda optimizer, *_: counted.update(count_state_bytes(engine.module, optimizer))
        )
        (run,) = time_interleaved({"deepspeed": engine_step}, batches, args.warmup_steps)
        hook.remove()
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        ranks = all_gather_object({"peak_rss_bytes": peak_rss, "rss_before_model_bytes": rss_before_model,
                                       "rss_after_initialize_bytes": rss_after_initialize, "counted": counted})
        result.update(stage=args.stage, ranks=ranks, tokens_per_s=run.tokens_per_s)
    if dist.get_rank() == 0 and args.out is not None:
        partial = args.out.with_name(args.out.name + ".partial")
        partial.write_text(json.dumps(result, indent=1))
        partial.replace(args.out)  # the driver never reads a half-written file
    # No destroy_process_group(): with gloo it sometimes hangs on a rank whose peer has already
    # exited (pytorch/pytorch#75097); process exit tears the group down.
    barrier()


def current_rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc/self/statm``)."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def micro_batches(dataset, micro_batch: int, accumulation: int, steps: int, seed: int) -> list[list[dict]]:
    """This rank's first ``steps`` optimizer steps of ``dataset``, each a list of micro-batches (batch, seq)."""
    sampler = RankInvariantSampler(len(dataset), micro_batch_size=micro_batch, accumulation_steps=accumulation,
                                   world_size=dist.get_world_size(), rank=dist.get_rank(), seed=seed)
    loader = iter(make_data_loader(dataset, sampler))
    return [take(loader, accumulation) for _ in range(steps)]


def make_plain_step(model: nn.Module, ds_config: dict, grad_clip: float,
                    device: torch.device) -> Callable[[list[dict]], StepResult]:
    """A plain PyTorch optimizer step equivalent to ``train_step``: DDP, torch AdamW, clipping.

    AdamW takes the config's optimizer params. DDP averages gradients over ranks and the
    micro-steps' gradients add up, so scaling each summed token loss by ``world / global_targets``
    leaves ``sum(token losses) / global_targets``, as ``train_step`` does.
    """
    if precision_of(ds_config) != "fp32":
        raise ValueError(f"the plain loop trains in fp32; the config trains in {precision_of(ds_config)}")
    optimizer = plain_adamw(model, ds_config)
    world = dist.get_world_size()
    # The RoPE tables are constant buffers: synced once at construction, not before every forward.
    ddp = nn.parallel.DistributedDataParallel(model, forward_sync_buffers=False) if world > 1 else model
    model.train()

    def step(micro: list[dict]) -> StepResult:
        accumulation = len(micro)
        local_targets = sum(int((batch["targets"] != IGNORE_INDEX).sum()) for batch in micro)
        global_targets = float(all_reduce(torch.tensor(float(local_targets), dtype=torch.float64)))
        scale = world / max(global_targets, 1.0)
        loss_sum = aux_sum = 0.0
        for index, batch in enumerate(micro):
            last = index == accumulation - 1
            with contextlib.nullcontext() if last or ddp is model else ddp.no_sync():
                output = ddp(input_ids=batch["input_ids"].to(device))
                token_loss = token_cross_entropy(output.logits, batch["targets"].to(device), reduction="sum")
                (token_loss * scale + output.aux_loss / accumulation).backward()
            loss_sum += token_loss.item()
            aux_sum += float(output.aux_loss)
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sums = all_reduce(torch.tensor([loss_sum, aux_sum, local_targets], dtype=torch.float64))
        return StepResult(sums, accumulation * world)

    return step


def time_interleaved(steps: dict[str, Callable[[list[dict]], StepResult]], batches: dict[str, list[list[dict]]],
                     warmup: int) -> list[TimedRun]:
    """Run every (implementation, data) pair one optimizer step at a time, round after round.

    Each implementation sees the same data in the same order, so their losses can be compared.
    Which implementation and which data set go first rotates over 4 rounds, so that a slow
    spell of a shared machine does not fall on one pair only. The first ``warmup`` rounds are
    not timed.
    """
    world_device = torch.device("cpu")
    rounds = len(next(iter(batches.values())))
    runs = {
        (name, data): TimedRun(name, data, [], 0, 0, [])
        for data in batches
        for name in steps
    }
    for step_index in range(rounds):
        names = list(steps) if step_index % 2 == 0 else list(reversed(steps))
        datas = list(batches) if step_index // 2 % 2 == 0 else list(reversed(batches))
        for data in datas:
            micro = batches[data][step_index]
            for name in names:
                barrier()
                started = time.perf_counter()
                result = steps[name](micro)
                (seconds,) = max_over_ranks([time.perf_counter() - started], world_device)
                run = runs[(name, data)]
                run.losses.append(result.loss)
                if step_index >= warmup:
                    run.seconds.append(seconds)
                    run.target_tokens = result.target_tokens
                    run.row_positions = sum(batch["input_ids"].numel() for batch in micro) * dist.get_world_size()
        print0(f"round {step_index + 1}/{rounds}: " + ", ".join(
            f"{name}/{data} {run.losses[-1]:.4f}" for (name, data), run in runs.items()))
    return list(runs.values())


def max_over_ranks(values: list[float], device: torch.device) -> list[float]:
    return all_reduce(torch.tensor(values, dtype=torch.float64, device=device), op=dist.ReduceOp.MAX).tolist()


def inner_optimizer(engine) -> torch.optim.Optimizer:
    """The torch optimizer that updates the weights: ZeRO wraps it in ``engine.optimizer.optimizer``."""
    optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"cannot find the inner torch optimizer of {type(engine.optimizer).__name__}")
    return optimizer


def count_state_bytes(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes held, at an optimizer step, by the module's parameters, the optimizer's own parameter
    copies (ZeRO's fp32 partitions), their gradients and the optimizer state; each storage once."""
    seen: set[int] = set()

    def size(tensor: torch.Tensor | None) -> int:
        if tensor is None or not isinstance(tensor, torch.Tensor):
            return 0
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()

    optimizer_params = [p for group in optimizer.param_groups for p in group["params"]]
    module_params = sum(size(p) for p in module.parameters())
    copies = sum(size(p) for p in optimizer_params)
    gradients = sum(size(p.grad) for p in [*module.parameters(), *optimizer_params])
    state = sum(size(value) for p in optimizer_params for value in optimizer.state.get(p, {}).values())
    return {"module_params": module_params, "optimizer_param_copies": copies, "gradients": gradients,
            "optimizer_state": state}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.part == "all":
        run_driver(args)
    else:
        run_part(args)


if __name__ == "__main__":
    main()
