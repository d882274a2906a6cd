"""Training tokens/s of the model presets on this machine, through ``pretrain_ds.py`` itself.

    python -m bench.preset_throughput [--presets 26m 104m 145m-moe] [--ranks 2] [--steps 8]

For each preset: ``deepspeed --num_gpus R pretrain_ds.py --preset P --max_seq_len 340
--batch_size 1 --accumulation_steps 1 --max_steps S`` (``bench.harness.train``) on the bundled
corpus (ZeRO-2; fp32 on CPU, where bf16 matmuls are slower, ``zero2_bf16.json`` elsewhere), then the median
``tokens_per_s`` of the steps after the first two (warm-up) from its ``metrics.jsonl``, with
the MFU the run logged. All presets run one after the other in the same invocation, so
their ratios are comparable; absolute figures depend on what else shares the cores.
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from bench.harness import REPO_ROOT, train

WARMUP_STEPS = 2
RUN_TIMEOUT_S = 3600


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["26m", "104m", "145m-moe"])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--max_seq_len", type=int, default=340)
    return parser.parse_args(argv)


def measure(preset: str, ranks: int, steps: int, max_seq_len: int, work: Path) -> dict:
    """One run of ``preset``; its median tokens/s and MFU after the warm-up steps."""
    config = "zero2_bf16.json" if torch.cuda.is_available() else "zero2_fp32.json"
    flags = ["--preset", preset, "--max_seq_len", str(max_seq_len), "--batch_size", "1", "--accumulation_steps", "1",
             "--max_steps", str(steps), "--log_interval", "1", "--save_interval", str(10 * steps),
             "--deepspeed_config", str(REPO_ROOT / "ds_configs" / config)]
    records = train(preset, ranks, flags, work / preset, work / f"{preset}.log", RUN_TIMEOUT_S)[WARMUP_STEPS:]
    return {"preset": preset, "config": config,
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in records),
            "mfu": statistics.median(r.get("mfu", 0.0) for r in records)}


def main(argv: list[str] | None = None) -> None:
    """Measure every preset, one after the other (each launch's progress printed), then print the table."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        rows = [measure(preset, args.ranks, args.steps, args.max_seq_len, Path(work)) for preset in args.presets]
    print()
    print(f"{args.ranks} ranks, micro-batch 1 x seq {args.max_seq_len} per rank, median of steps "
          f"{WARMUP_STEPS + 1}-{args.steps}")
    print("| preset | config | tokens/s | MFU |\n|---|---|---|---|")
    for row in rows:
        print(f"| `{row['preset']}` | {row['config']} | {row['tokens_per_s']:,.0f} | {row['mfu']:.1%} |")


if __name__ == "__main__":
    main()
