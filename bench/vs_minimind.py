"""Useful tokens/s of this project's trainer against MiniMind's own training recipe, as a ratio measured in one run.

    python -m bench.vs_minimind              # from the repository root; 8 optimizer steps, ~4 min on 2 idle CPU cores
    python -m bench.vs_minimind --profile    # also torch.profiler's top ops of each side (2 more steps)
    python -m bench.vs_minimind --hidden_size 64 --num_hidden_layers 2 --max_seq_len 64 --steps 2   # toy size

One process, no launcher (a 1-rank process group, as ``pretrain_ds.py`` starts without one). Both
sides train the same model (same seed, same initial weights, fp32) on the bundled corpus
(``minimind.data.default_corpus_path()``, the shipped tokenizer, the trainer's token cache) with the
same micro-batch:

- **ours** is what ``pretrain_ds.py --deepspeed_config ds_configs/zero2_fp32.json --hidden_size 512
  --num_hidden_layers 8 --max_seq_len 340 --batch_size 8`` trains (the size flags of this script
  change that command, which is parsed by the trainer's own parser): packed windows
  (``PackedWindows``, the default ``--packing 1``) dealt by ``RankInvariantSampler`` through
  ``make_data_loader`` as ``minimind.data.pipeline.training_data`` builds them, a DeepSpeed engine from the JSON
  (``bench.engine.build_engine``: ZeRO-2, fp32, torch's fused AdamW, accumulation 8) stepped by
  ``minimind.training.api.train_step``. Left out: the trainer's cosine schedule and logging
  (one scheduler call and a few reads per optimizer step).
- **MiniMind** is its ``train_pretrain.py`` recipe rebuilt: one document per row as its
  ``PretrainDataset`` makes them (``PaddedDocuments``: bos + text + eos, truncated or padded; as
  MiniMind's ``(X, Y, loss_mask)`` with ``loss_mask = Y != pad``), a plain loop over the same model
  with PyTorch RMSNorm/RoPE: forward, per-position cross-entropy, ``(loss * loss_mask).sum() /
  loss_mask.sum() + aux_loss``, divided by the accumulation, backward; every accumulation-th
  micro-step ``clip_grad_norm_`` (the JSON's clipping), ``torch.optim.AdamW`` (the JSON's lr, betas,
  eps and weight decay), ``zero_grad(set_to_none=True)``. Its rows come pre-tokenized from the same
  cache through the same sampler and loader (MiniMind tokenizes in ``__getitem__``), so the baseline
  pays nothing extra for its data; its constant learning rate leaves out MiniMind's per-step cosine.

``--deepspeed_config auto`` leaves the flag out of our command, as a user who passes only size
flags does: the trainer then picks the precision this CPU suits (``cpu_ds_config``: bf16
where the processor has bf16 instructions and one decoder block trains 1.2x faster in bf16),
while the baseline stays what MiniMind's trainer does on a CPU, fp32 (its autocast is CUDA-only).

After ``--warmup`` untimed optimizer steps of each side, the sides take turns, one optimizer step
each (which goes first alternates), so that a busy machine slows both alike. A step's time includes
taking its micro-batches from the loader. Useful tokens are the targets that count in the loss (not
padding); each side's figure is the median over its steps of useful tokens / step time, and the
ratio is ours / MiniMind's. Positions/s counts every position computed, padding included, so the
ratio is the per-position speed ratio times the useful-share ratio (up to the medians). ``--json``
writes every figure; ``--profile`` then runs torch.profiler over ``--profile_steps`` more steps of
each side and prints the ops with the most self CPU time.
"""

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from torch import nn
from torch.utils.data import Dataset

from bench.engine import build_engine, plain_adamw
from bench.train_throughput import cpu_model
from minimind.data import (
    IGNORE_INDEX,
    PackedWindows,
    PaddedDocuments,
    RankInvariantSampler,
    build_or_load_token_cache,
    default_corpus_path,
    make_data_loader,
)
from minimind.data.pipeline import TrainingData
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.model.precision import precision_of
from minimind.tokenizer.loader import load_tokenizer
from minimind.training.api import (
    BatchPlan,
    accelerator_device,
    barrier,
    cpu_ds_config,
    init_process_group,
    model_config_kwargs,
    parse_trainer_flags,
    resolved_flags,
    set_cpu_threads,
    train_step,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DS_CONFIG = Path("ds_configs") / "zero2_fp32.json"
TOP_OPS = 12


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """This benchmark's flags: the trainer command's sizes, the number of steps, profiling and output."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deepspeed_config", default=str(DEFAULT_DS_CONFIG),
                        help="relative to the repo root; 'auto': leave the flag out, so that the trainer picks the "
                             "precision this machine suits (the baseline stays MiniMind's fp32)")
    parser.add_argument("--hidden_size", type=int, default=512)
    parser.add_argument("--num_hidden_layers", type=int, default=8)
    parser.add_argument("--max_seq_len", type=int, default=340)
    parser.add_argument("--batch_size", type=int, default=8, help="micro-batch")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps of each side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps of each side first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as the trainer sets them)")
    parser.add_argument("--profile", action="store_true", help="also profile each side with torch.profiler")
    parser.add_argument("--profile_steps", type=int, default=1, help="optimizer steps of each side profiled")
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    return parser.parse_args(argv)


def trainer_command(args: argparse.Namespace) -> list[str]:
    """The ``pretrain_ds.py`` flags whose training the ratio counts for."""
    config = [] if args.deepspeed_config == "auto" else ["--deepspeed_config", args.deepspeed_config]
    return [*config, "--hidden_size", str(args.hidden_size), "--num_hidden_layers", str(args.num_hidden_layers),
            "--max_seq_len", str(args.max_seq_len), "--batch_size", str(args.batch_size)]


def trainer_flags(args: argparse.Namespace) -> argparse.Namespace:
    """``trainer_command`` parsed by the trainer's own parser, its defaults filled in as the trainer fills them
    (on a CPU-only machine without a config, the precision this processor runs fastest)."""
    parsed = parse_trainer_flags(trainer_command(args))
    if parsed.deepspeed_config is not None:
        parsed.deepspeed_config = str(REPO_ROOT / parsed.deepspeed_config)
    flags, _ = resolved_flags(vars(parsed), cpu_only=get_accelerator().device_name() == "cpu")
    if flags["deepspeed_config"] is None:
        flags["deepspeed_config"], line = cpu_ds_config(flags)
        print(line, flush=True)
    return argparse.Namespace(**flags)


def optimizer_steps(dataset: Dataset, batch: BatchPlan, seed: int) -> Iterator[list[dict]]:
    """One process's micro-batches of ``dataset`` (``input_ids``/``targets`` (micro_batch, seq)), an
    optimizer step's worth at a time, dealt as ``minimind.data.pipeline.training_data`` deals them; epoch after
    epoch."""
    sampler = RankInvariantSampler(len(dataset), micro_batch_size=batch.micro_batch,
                                   accumulation_steps=batch.accumulation, world_size=1, rank=0, seed=seed)
    loader = make_data_loader(dataset, sampler, pin_memory=get_accelerator().device_name() != "cpu")
    data = TrainingData(sampler, loader, epochs=sys.maxsize, total_steps=sys.maxsize,
                        accumulation=batch.accumulation, log=print)
    return (micro_batches for _, micro_batches in data.optimizer_steps(0, 0))


def minimind_rows(batch: dict, pad_id: int) -> dict:
    """MiniMind's ``PretrainDataset`` triple of a padded micro-batch: ``X`` = the row's first L tokens,
    ``Y`` = its last L (padding as ``pad_id``), ``loss_mask`` = ``Y != pad_id`` (int64); each (batch, L)."""
    next_tokens = batch["targets"].masked_fill(batch["targets"] == IGNORE_INDEX, pad_id)
    return {"X": batch["input_ids"], "Y": next_tokens, "loss_mask": (next_tokens != pad_id).long()}


def minimind_step(model: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float, micro_batches: list[dict],
                  device: torch.device) -> torch.Tensor:
    """One optimizer step of MiniMind's ``train_pretrain.py`` in fp32 over ``minimind_rows`` micro-batches;
    returns the loss as it logs it (the micro-batches' mean masked losses, averaged), a device scalar."""
    loss_fct = nn.CrossEntropyLoss(reduction="none")
    accumulation = len(micro_batches)
    step_loss = torch.zeros((), device=device)
    for rows in micro_batches:
        inputs, next_tokens, loss_mask = (rows[key].to(device) for key in ("X", "Y", "loss_mask"))
        res = model(inputs)
        loss = loss_fct(res.logits.view(-1, res.logits.size(-1)), next_tokens.view(-1)).view(next_tokens.size())
        loss = (loss * loss_mask).sum() / loss_mask.sum() + res.aux_loss
        loss = loss / accumulation
        loss.backward()
        step_loss += loss.detach()
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss


@dataclass
class Side:
    """One side of the comparison: ``step()`` runs an optimizer step and returns (loss, useful tokens, positions)."""

    name: str
    label: str
    data: str
    step: Callable[[], tuple[float, int, int]]
    corpus_useful_share: float  # non-padding targets over all positions, whole dataset
    seconds: list[float] = field(default_factory=list)
    useful_tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def figures(self) -> dict:
        """The timed steps and their medians: useful tokens/s and positions/s (each per step, then the median)."""
        def median_rate(counts: list[int]) -> float:
            return statistics.median(count / seconds for count, seconds in zip(counts, self.seconds, strict=True))

        return {
            "label": self.label, "data": self.data, "seconds": self.seconds, "useful_tokens": self.useful_tokens,
            "positions": self.positions, "losses": self.losses, "median_step_s": statistics.median(self.seconds),
            "useful_tokens_per_s": median_rate(self.useful_tokens), "positions_per_s": median_rate(self.positions),
            "useful_share": sum(self.useful_tokens) / sum(self.positions),
            "corpus_useful_share": self.corpus_useful_share,
        }


def time_rounds(sides: list[Side], warmup: int, steps: int) -> None:
    """``warmup`` untimed then ``steps`` timed optimizer steps of each side, taking turns (the first
    alternates); records each side's losses (every step) and timed steps' seconds and counts."""
    accelerator = get_accelerator()
    for index in range(warmup + steps):
        for side in sides if index % 2 == 0 else sides[::-1]:
            started = time.perf_counter()
            loss, useful, positions = side.step()
            accelerator.synchronize()  # the step's device work is done before the clock stops
            seconds = time.perf_counter() - started
            side.losses.append(loss)
            if index >= warmup:
                side.seconds.append(seconds)
                side.useful_tokens.append(useful)
                side.positions.append(positions)
        print(f"round {index + 1}/{warmup + steps}{' (warm-up)' if index < warmup else ''}: " + ", ".join(
            f"{side.name} loss {side.losses[-1]:.4f}" + (f" {side.seconds[-1]:.2f} s" if index >= warmup else "")
            for side in sides), flush=True)


def profile_top_ops(side: Side, steps: int) -> list[dict]:
    """torch.profiler over ``steps`` optimizer steps of ``side``: the ``TOP_OPS`` ops with the most self CPU time."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(steps):
            side.step()
        get_accelerator().synchronize()
    events = sorted(profiler.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    total_us = sum(event.self_cpu_time_total for event in events)
    return [{"op": event.key, "self_cpu_s": event.self_cpu_time_total / 1e6,
             "share": event.self_cpu_time_total / total_us, "calls": event.count} for event in events[:TOP_OPS]]


def build_sides(args: argparse.Namespace, flags: argparse.Namespace) -> tuple[list[Side], dict]:
    """The two sides, from one seed and the same initial weights, and the settings they run with."""
    tokenizer = load_tokenizer(flags.tokenizer_path)
    cache = build_or_load_token_cache(default_corpus_path(log=print), tokenizer, log=print)
    device = accelerator_device()
    kwargs = model_config_kwargs(vars(flags))
    vocab_size = max(len(tokenizer), 6400)
    deepspeed.runtime.utils.set_random_seed(flags.seed)
    model = MiniMindForCausalLM(MiniMindConfig(**kwargs, vocab_size=vocab_size))
    baseline = MiniMindForCausalLM(MiniMindConfig(**{**kwargs, "kernel_impl": "torch"}, vocab_size=vocab_size))
    baseline.load_state_dict(model.state_dict())
    baseline.to(device).train()
    engine, ds_config, batch = build_engine(Path(flags.deepspeed_config), 1, model, flags.batch_size,
                                            flags.accumulation_steps)
    engine.train()
    optimizer = plain_adamw(baseline, ds_config)
    pad_id = tokenizer.pad_token_id
    packed = PackedWindows(cache.tokens, flags.max_seq_len, pad_id=pad_id)
    padded = PaddedDocuments(cache.tokens, cache.offsets, flags.max_seq_len, pad_id=pad_id)
    packed_steps = optimizer_steps(packed, batch, flags.seed)
    padded_steps = optimizer_steps(padded, batch, flags.seed)

    def ours() -> tuple[float, int, int]:
        micro_batches = next(packed_steps)
        result = train_step(engine, micro_batches, device)
        return float(result.loss), int(result.target_tokens), sum(b["input_ids"].numel() for b in micro_batches)

    def minimind() -> tuple[float, int, int]:
        micro_batches = [minimind_rows(rows, pad_id) for rows in next(padded_steps)]
        loss = float(minimind_step(baseline, optimizer, batch.grad_clip, micro_batches, device))
        return (loss, sum(int(rows["loss_mask"].sum()) for rows in micro_batches),
                sum(rows["X"].numel() for rows in micro_batches))

    stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    sides = [
        Side("ours", f"this project: DeepSpeed ZeRO-{stage} {precision_of(ds_config)}, `train_step`",
             "packed windows (`PackedWindows`)", ours, packed.num_label_tokens / (len(packed) * flags.max_seq_len)),
        Side("minimind", "MiniMind's recipe: plain PyTorch fp32 loop, `torch.optim.AdamW`",
             "one document per row (`PaddedDocuments`)", minimind,
             padded.num_label_tokens / (len(padded) * flags.max_seq_len)),
    ]
    settings = {
        "command": "pretrain_ds.py " + " ".join(trainer_command(args)), "device": str(device),
        "hidden_size": flags.hidden_size, "num_hidden_layers": flags.num_hidden_layers, "vocab_size": vocab_size,
        "parameters": sum(p.numel() for p in baseline.parameters()), "max_seq_len": flags.max_seq_len,
        "micro_batch": batch.micro_batch, "accumulation": batch.accumulation, "grad_clip": batch.grad_clip,
        "seed": flags.seed, "warmup_steps": args.warmup, "timed_steps": args.steps,
    }
    return sides, settings


def machine() -> dict:
    """The CPU, its cores, torch's threads and the library versions."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "deepspeed": deepspeed.__version__,
            "accelerator": get_accelerator().device_name()}


def ratios(ours: dict, minimind: dict) -> dict:
    """Ours / MiniMind's: useful tokens/s (the figure), positions/s and useful share; and the useful-tokens ratio
    at each dataset's whole-corpus useful share (free of which documents the few timed steps drew)."""
    return {
        "useful_tokens_per_s": ours["useful_tokens_per_s"] / minimind["useful_tokens_per_s"],
        "positions_per_s": ours["positions_per_s"] / minimind["positions_per_s"],
        "useful_share": ours["useful_share"] / minimind["useful_share"],
        "at_corpus_useful_share": (ours["positions_per_s"] * ours["corpus_useful_share"])
        / (minimind["positions_per_s"] * minimind["corpus_useful_share"]),
    }


def print_report(report: dict) -> None:
    """The machine, the settings, each side's figures and the ratios, as markdown."""
    host, settings, sides, ratio = report["machine"], report["settings"], report["sides"], report["ratio"]
    print()
    print(f"Machine: {host['cpu']}, {host['cores']} cores ({host['usable_cores']} usable), {host['torch_threads']} "
          f"torch thread(s), torch {host['torch']}, DeepSpeed {host['deepspeed']}, device {settings['device']}; "
          f"{report['date']}; load average {report['load_before']} before, {report['load_after']} after; "
          f"total {report['seconds']:.0f} s")
    print(f"Ours: `{settings['command']}`. Model hidden {settings['hidden_size']} x {settings['num_hidden_layers']} "
          f"layers, vocab {settings['vocab_size']}, {settings['parameters'] / 1e6:.2f}M parameters (MiniMind fp32); "
          f"max_seq_len {settings['max_seq_len']}, micro-batch {settings['micro_batch']} x accumulation "
          f"{settings['accumulation']}, one process; {settings['warmup_steps']} warm-up + {settings['timed_steps']} "
          "timed optimizer steps per side, taking turns; medians over the timed steps")
    print()
    print("| side | data | median step (s) | useful tokens / step | useful share (steps; corpus) | "
          "useful tokens/s | positions/s | first loss |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for side in sides.values():
        print(f"| {side['label']} | {side['data']} | {side['median_step_s']:.2f} | "
              f"{statistics.mean(side['useful_tokens']):,.0f} | {side['useful_share']:.1%}; "
              f"{side['corpus_useful_share']:.1%} | {side['useful_tokens_per_s']:,.0f} | "
              f"{side['positions_per_s']:,.0f} | {side['losses'][0]:.4f} |")
    print()
    print(f"- **useful tokens/s, ours / MiniMind: {ratio['useful_tokens_per_s']:.2f}x** = positions/s "
          f"{ratio['positions_per_s']:.2f}x (per-position speed) x useful share {ratio['useful_share']:.2f}x "
          "(packing)")
    print(f"- at each dataset's whole-corpus useful share: {ratio['at_corpus_useful_share']:.2f}x")
    for name, ops in report.get("profile", {}).items():
        print()
        print(f"torch.profiler, {name}, {settings.get('profile_steps')} optimizer step(s), top {len(ops)} ops by "
              "self CPU time:")
        print()
        print("| op | self CPU (s) | share | calls |")
        print("|---|---:|---:|---:|")
        for op in ops:
            print(f"| `{op['op']}` | {op['self_cpu_s']:.2f} | {op['share']:.1%} | {op['calls']} |")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (``/proc/loadavg``): how busy the machine was."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> None:
    """Run both sides in turns, print the report and write it to ``--json`` if asked."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    else:
        print(set_cpu_threads(), flush=True)  # as pretrain_ds.py sets them
    flags = trainer_flags(args)
    started, load_before = time.perf_counter(), load_average()
    init_process_group()
    sides, settings = build_sides(args, flags)
    time_rounds(sides, args.warmup, args.steps)
    figures = {side.name: side.figures() for side in sides}
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M %Z"), "settings": settings,
              "sides": figures, "ratio": ratios(figures["ours"], figures["minimind"])}
    if args.profile:
        settings["profile_steps"] = args.profile_steps
        report["profile"] = {side.name: profile_top_ops(side, args.profile_steps) for side in sides}
    report.update(load_before=load_before, load_after=load_average(), seconds=time.perf_counter() - started)
    print_report(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
