"""Training tokens/s of the model presets on this machine, through ``pretrain_ds.py`` itself.

    python -m bench.preset_throughput [--presets 26m 104m 145m-moe] [--ranks 2] [--steps 8]

For each preset: ``deepspeed --num_gpus R pretrain_ds.py --preset P --max_seq_len 340
--batch_size 1 --accumulation_steps 1 --max_steps S`` on the bundled corpus (ZeRO-2; fp32
on CPU, where bf16 matmuls are slower, ``zero2_bf16.json`` elsewhere), then the median
``tokens_per_s`` of the steps after the first two (warm-up) from its ``metrics.jsonl``, with
the MFU the run logged. All presets run one after the other in the same invocation, so
their ratios are comparable; absolute figures depend on what else shares the cores.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from minimind.training.run_dir.files import is_validation_record

REPO_ROOT = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 2


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
    save_dir = work / preset
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks), "pretrain_ds.py",
               "--preset", preset, "--max_seq_len", str(max_seq_len), "--batch_size", "1", "--accumulation_steps",
               "1", "--max_steps", str(steps), "--log_interval", "1", "--save_interval", str(10 * steps),
               "--deepspeed_config", str(REPO_ROOT / "ds_configs" / config), "--save_dir", str(save_dir)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{preset}: run failed ({result.returncode}):\n{result.stderr[-3000:]}")
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    records = [record for record in records if not is_validation_record(record)][WARMUP_STEPS:]
    return {"preset": preset, "config": config,
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in records),
            "mfu": statistics.median(r.get("mfu", 0.0) for r in records)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"{args.ranks} ranks, micro-batch 1 x seq {args.max_seq_len} per rank, median of steps "
          f"{WARMUP_STEPS + 1}-{args.steps}")
    print("| preset | config | tokens/s | MFU |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for preset in args.presets:
            row = measure(preset, args.ranks, args.steps, args.max_seq_len, Path(work))
            print(f"| `{row['preset']}` | {row['config']} | {row['tokens_per_s']:,.0f} | {row['mfu']:.1%} |",
                  flush=True)


if __name__ == "__main__":
    main()
