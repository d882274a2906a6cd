"""Tokenization throughput of the token cache by number of worker processes, and the compute share that padding
wastes.

    python -m bench.tokenize_throughput [--data PATH | --synthesize_mb 200] [--workers 1 2] [--repeats 3]
        [--tokenizer DIR] [--max_seq_len 340]

Builds a fresh token cache of the data (default: the default corpus; ``--synthesize_mb``: a
temporary JSON Lines file of that many MB, the default corpus's lines repeated) in a temporary
folder once per ``--workers`` count, and reports MB/s and tokens/s for each, with the ratio
against 1 worker (one process with one tokenizer thread, always measured first in the same run),
next to a read-only pass (JSON parsing alone) and to one process with the tokenizers library's
threads on all cores (the path a build of one work unit takes); with ``--repeats``, the builds
are interleaved and the fastest of each kind reported. Every build must give the same tokens.
Then compares MiniMind's padded mode with packing at ``max_seq_len``: the padding share is the
fraction of row positions whose label is masked, and the gain is packing's useful tokens per row
position over padded mode's.
"""

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from minimind.data import PackedWindows, PaddedDocuments, build_or_load_token_cache, default_corpus_path, validate_texts
from minimind.data.work_units import plan_units
from minimind.flags import POSITIVE
from minimind.tokenizer import load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--data", type=Path, default=None, help="data file (default: the default corpus)")
    data.add_argument("--synthesize_mb", type=float, default=None,
                      help="tokenize a temporary JSON Lines file of this many MB (the default corpus repeated)")
    parser.add_argument("--workers", type=POSITIVE, nargs="+", default=[1],
                        help="worker-process counts to measure, each with a fresh build (1 is always measured)")
    parser.add_argument("--repeats", type=POSITIVE, default=1,
                        help="builds of each kind, interleaved; the fastest is reported (a shared machine is noisy)")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder (default: shipped)")
    parser.add_argument("--max_seq_len", type=int, default=340)
    args = parser.parse_args()

    tokenizer = load_tokenizer(args.tokenizer)
    with tempfile.TemporaryDirectory() as folder:
        data = args.data or default_corpus_path()
        if args.synthesize_mb is not None:
            data = synthesize(Path(folder) / "synthetic.jsonl", data, int(args.synthesize_mb * 1e6))
        megabytes = data.stat().st_size / 1e6
        print(f"data: {data} ({megabytes:.1f} MB, {len(plan_units(data))} work units); "
              f"{len(os.sched_getaffinity(0))} usable CPUs; "
              f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', '(unset)')}")
        start = time.perf_counter()
        validate_texts(data)
        read_seconds = time.perf_counter() - start
        print(f"read-only pass:          {read_seconds:7.2f} s  {megabytes / read_seconds:7.1f} MB/s")
        cores = len(os.sched_getaffinity(0))
        builds = [(f"{workers:2d} worker{'s' if workers > 1 else ' '}", workers, None)
                  for workers in dict.fromkeys([1, *args.workers])]
        # the path before worker processes: one pass in one process, the tokenizers library's threads on all cores
        builds.append((f"1 process, {cores} threads", cores, data.stat().st_size + 1))
        seconds: dict[str, list[float]] = {label: [] for label, _, _ in builds}
        reference = None
        for _ in range(args.repeats):  # the builds interleaved, so that a slow spell of the machine hits all
            for label, workers, part_bytes in builds:
                with tempfile.TemporaryDirectory(dir=folder) as cache_dir:
                    start = time.perf_counter()
                    cache = build_or_load_token_cache(data, tokenizer, cache_dir=cache_dir, workers=workers,
                                                      part_bytes=part_bytes, show_progress=False, log=lambda line: None)
                    seconds[label].append(time.perf_counter() - start)
                    tokens = (np.array(cache.tokens), cache.offsets)
                reference = reference or tokens
                if not (np.array_equal(tokens[0], reference[0]) and np.array_equal(tokens[1], reference[1])):
                    raise SystemExit(f"{label} built other tokens than 1 worker")
        baseline = min(seconds[builds[0][0]])
        for label, times in seconds.items():
            fastest = min(times)
            print(f"tokenizing, {label:>20}: {fastest:7.2f} s  {megabytes / fastest:7.1f} MB/s  "
                  f"{len(reference[0]) / fastest / 1e6:6.2f} M tokens/s  {baseline / fastest:5.2f}x 1 worker  "
                  f"(fastest of {', '.join(f'{time_s:.1f}' for time_s in times)} s)")
    report_padding(*reference, args.max_seq_len)


def synthesize(path: Path, source: Path, size: int) -> Path:
    """Write ``path``: the lines of ``source`` over and over, up to the first line end at or past ``size`` bytes."""
    lines = source.read_bytes().splitlines(keepends=True)
    written = 0
    with open(path, "wb") as out:
        for line in itertools.cycle(lines):
            out.write(line)
            written += len(line)
            if written >= size:
                return path


def report_padding(tokens: np.ndarray, offsets: np.ndarray, length: int) -> None:
    """Print the padding share of padded rows and of packed windows at ``length`` over a cache's ``tokens`` and
    document ``offsets``, and packing's gain."""
    packed = PackedWindows(tokens, length)
    padded = PaddedDocuments(tokens, offsets, length)
    useful = {}
    for name, dataset in (("padded", padded), ("packed", packed)):
        positions = len(dataset) * length
        useful[name] = dataset.num_label_tokens / positions
        print(f"{name} (max_seq_len {length}): {len(dataset)} rows, {dataset.num_label_tokens} target tokens, "
              f"padding share {1 - useful[name]:.1%}")
    print(f"packing gain: {useful['packed'] / useful['padded']:.2f}x useful tokens per row position "
          f"(padded mode also drops {len(tokens) - (len(offsets) - 1) - padded.num_label_tokens} "
          f"target tokens to truncation)")


if __name__ == "__main__":
    main()
