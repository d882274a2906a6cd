"""Reference runs for a change meant to leave training alone (a refactor, a move): four short trainings
whose logged numbers must stay bitwise the same before and after it.

    python -m bench.reference_runs --out before.json        # on the commit before the change
    python -m bench.reference_runs --out after.json         # on the change
    python -m bench.reference_runs --compare before.json after.json

The runs: the flag-less run (the bundled corpus, one rank, the CPU demonstration on a CPU-only
machine); a 2-rank ZeRO-2 fp32 run of a tiny model; the same run stopped after 15 of its steps and
resumed with ``--from_resume 1`` to 30; a 2-rank MoE run. What is kept of each logged row is what
training computes (loss, auxiliary loss, learning rate, gradient norm, validation loss, tokens
seen), never a time. JSON keeps every float exactly, so equal files mean bitwise equal numbers.
A CPU-only run of the flag-less job picks its precision by timing the processor, which a busy
machine can sway: the file records each run's precision, and the comparison calls runs trained in
different precisions not comparable rather than different.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench.harness import REPO_ROOT, run_logged
from minimind.report import read_metrics_file, read_run_settings
from minimind.training.api import RUN_SETTINGS_FILE, free_local_port

TINY = ["--hidden_size", "64", "--num_hidden_layers", "2", "--max_seq_len", "32", "--log_interval", "1",
        "--batch_size", "2", "--accumulation_steps", "2", "--learning_rate", "3e-3",
        "--deepspeed_config", str(REPO_ROOT / "ds_configs" / "zero2_fp32.json")]
PRECISIONS = "precision"  # the key of the file's {run: precision it trained in}
KEPT = ("step", "loss", "aux_loss", "lr", "grad_norm", "tokens_seen", "skipped_steps", "loss_scale", "val_loss")
TIMEOUT_S = 3600


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The output file, or the two files to compare."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the runs' numbers to this JSON file")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"),
                        help="compare two files written by --out; exit 1 where they differ")
    args = parser.parse_args(argv)
    if (args.out is None) == (args.compare is None):
        parser.error("pass --out FILE or --compare BEFORE AFTER")
    return args


def kept(save_dir: Path) -> list[dict]:
    """Every training and validation row of a run, with only what training computes."""
    rows = read_metrics_file(save_dir)
    return [{key: row[key] for key in KEPT if key in row} for row in [*rows.training, *rows.validation]]


def pretrain(ranks: int, flags: list[str], save_dir: Path, log_path: Path, env: dict) -> None:
    """``pretrain_ds.py flags --save_dir save_dir`` on ``ranks`` ranks, to its end (``SystemExit`` if it fails)."""
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks), "--master_port",
               str(free_local_port()), "--module", "pretrain_ds", *flags, "--save_dir", str(save_dir)]
    print(f"{save_dir.name}: {' '.join(command[3:])}", flush=True)
    finished = run_logged(command, log_path, TIMEOUT_S, env)
    if finished.status != 0:
        why = f" ({finished.stopped})" if finished.stopped else ""
        raise SystemExit(f"{save_dir.name}: status {finished.status}{why}, see {log_path}")


def reference_runs(work: Path) -> dict[str, list[dict] | dict[str, str]]:
    """The four runs' rows, in ``work`` (with a token cache of their own), and the precision each trained in."""
    env = {"MINIMIND_CACHE_DIR": str(work / "cache")}
    pretrain(1, [], work / "flagless", work / "flagless.log", env)
    pretrain(2, [*TINY, "--max_steps", "30", "--save_interval", "10"], work / "zero2", work / "zero2.log", env)
    pretrain(2, [*TINY, "--max_steps", "15", "--save_interval", "10"], work / "resume", work / "resume_1.log", env)
    pretrain(2, [*TINY, "--max_steps", "30", "--save_interval", "10", "--from_resume", "1"], work / "resume",
             work / "resume_2.log", env)
    pretrain(2, [*TINY, "--use_moe", "1", "--max_steps", "20"], work / "moe", work / "moe.log", env)
    folders = {"flag-less": "flagless", "zero2": "zero2", "resume": "resume", "moe": "moe"}
    precisions = {name: read_run_settings(work / folder / RUN_SETTINGS_FILE)["precision"]
                  for name, folder in folders.items()}
    return {**{name: kept(work / folder) for name, folder in folders.items()}, PRECISIONS: precisions}


def compare(before: Path, after: Path) -> int:
    """Print, run by run, whether the numbers are bitwise the same; 1 where any differs."""
    old, new = json.loads(before.read_text()), json.loads(after.read_text())
    old_precisions, new_precisions = old.pop(PRECISIONS, {}), new.pop(PRECISIONS, {})
    status = 0
    for name in sorted(old.keys() | new.keys()):
        same = old.get(name) == new.get(name)
        status |= not same
        counts = f"({len(old.get(name) or [])} rows before, {len(new.get(name) or [])} after)"
        precisions = (old_precisions.get(name), new_precisions.get(name))
        if not same and None not in precisions and precisions[0] != precisions[1]:
            print(f"{name}: not comparable, trained in {precisions[0]} before and {precisions[1]} after {counts}")
        else:
            print(f"{name}: {'bitwise the same' if same else 'DIFFERENT'} {counts}")
    return status


def main(argv: list[str] | None = None) -> int:
    """Run the reference runs into ``--out``, or compare two such files."""
    args = parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    with tempfile.TemporaryDirectory(prefix="reference_runs_") as work:
        runs = reference_runs(Path(work))
    args.out.write_text(json.dumps(runs, indent=1) + "\n")
    rows = [runs[name] for name in runs if name != PRECISIONS]
    print(f"{sum(map(len, rows))} rows of {len(rows)} runs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
