"""What the checkpoint manifest costs: hashing the files of a save against writing them.

    python -m bench.checkpoint_hashing                  # 26m and 104m presets; about 2 minutes on 2 CPU cores
    python -m bench.checkpoint_hashing --presets 26m --repeats 1

One process builds each preset's model in a DeepSpeed engine (``ds_configs/zero2_fp32.json``,
one rank), trains one optimizer step so that Adam's moments exist, then, ``--repeats`` times,
times ``engine.save_checkpoint`` of a fresh tag and the xxh3-128 checksums of the files it
wrote (``minimind.checkpoint.manifest.file_entry``, as every save does right after writing,
reading back what the page cache holds). The table gives the median of each, the hashing
rate and hashing as a share of the save.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.engine import build_engine
from minimind.checkpoint.manifest import file_entry, tag_files
from minimind.model import MiniMindConfig, MiniMindForCausalLM
from minimind.model.presets import preset_config_kwargs
from minimind.training.api import init_process_group

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "ds_configs" / "zero2_fp32.json"
GB = 1e9


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["26m", "104m"])
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def trained_engine(preset: str):
    """An engine around ``preset``'s model after one optimizer step (Adam's moments allocated)."""
    model = MiniMindForCausalLM(MiniMindConfig(**preset_config_kwargs(preset)))
    engine, _, _ = build_engine(CONFIG, data_parallel=1, model=model, micro_batch=1, accumulation=1)
    tokens = torch.randint(0, model.config.vocab_size, (1, 16))
    loss = engine(input_ids=tokens, labels=tokens).loss
    engine.backward(loss)
    engine.step()
    return engine


def time_save_and_hash(engine, folder: Path, tag: str) -> tuple[float, float, int]:
    """Seconds to save tag ``tag`` under ``folder``, seconds to checksum its files, and their bytes."""
    started = time.perf_counter()
    engine.save_checkpoint(str(folder), tag=tag, save_latest=False)
    saved = time.perf_counter()
    tag_dir = folder / tag
    entries = [file_entry(path, tag_dir) for path in tag_files(tag_dir)]
    hashed = time.perf_counter()
    return saved - started, hashed - saved, sum(entry.size for entry in entries)


def main() -> None:
    """Print the table for each preset."""
    args = parse_args()
    init_process_group()
    print("| preset | checkpoint (GB) | save (s) | hashing (s) | hashing (s/GB) | hashing / save |")
    print("|---|---|---|---|---|---|")
    for preset in args.presets:
        engine = trained_engine(preset)
        with tempfile.TemporaryDirectory(dir=REPO_ROOT) as folder:
            runs = [time_save_and_hash(engine, Path(folder), f"step_{repeat}") for repeat in range(args.repeats)]
        save_s = statistics.median(run[0] for run in runs)
        hash_s = statistics.median(run[1] for run in runs)
        size = runs[0][2]
        print(f"| {preset} | {size / GB:.2f} | {save_s:.2f} | {hash_s:.3f} | {hash_s / (size / GB):.3f} | "
              f"{hash_s / save_s:.1%} |", flush=True)
        del engine


if __name__ == "__main__":
    main()
