"""Tokenization throughput of the token cache, and the compute share that padding wastes.

    python -m bench.tokenize_throughput [--data PATH] [--tokenizer DIR] [--max_seq_len 340]

Builds a fresh token cache of the data (default: the default corpus) in a temporary folder and
reports MB/s and tokens/s, next to a read-only pass (JSON parsing alone) for comparison. Then
compares MiniMind's padded mode with packing at ``max_seq_len``: the padding share is the
fraction of row positions whose label is masked, and the gain is packing's useful tokens per
row position over padded mode's.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from minimind.data import (
    PackedWindows,
    PaddedDocuments,
    build_or_load_token_cache,
    default_corpus_path,
    validate_texts,
)
from minimind.tokenizer import load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="JSON Lines file (default: the default corpus)")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder (default: shipped)")
    parser.add_argument("--max_seq_len", type=int, default=340)
    args = parser.parse_args()

    data = args.data if args.data is not None else default_corpus_path()
    tokenizer = load_tokenizer(args.tokenizer)
    megabytes = data.stat().st_size / 1e6
    print(f"data: {data} ({megabytes:.1f} MB); {os.cpu_count()} CPUs; "
          f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', '(unset)')}")

    start = time.perf_counter()
    validate_texts(data)
    read_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        cache = build_or_load_token_cache(data, tokenizer, cache_dir=cache_dir, show_progress=False)
        build_seconds = time.perf_counter() - start
        print(f"read-only pass:   {read_seconds:6.2f} s  {megabytes / read_seconds:7.1f} MB/s")
        print(f"tokenizing build: {build_seconds:6.2f} s  {megabytes / build_seconds:7.1f} MB/s  "
              f"{cache.num_tokens / build_seconds / 1e6:.2f} M tokens/s  "
              f"({cache.num_tokens} tokens, {cache.num_documents} documents)")

        length = args.max_seq_len
        packed = PackedWindows(cache.tokens, length)
        padded = PaddedDocuments(cache.tokens, cache.offsets, length)
        useful = {}
        for name, dataset in (("padded", padded), ("packed", packed)):
            positions = len(dataset) * length
            useful[name] = dataset.num_label_tokens / positions
            print(f"{name} (max_seq_len {length}): {len(dataset)} rows, {dataset.num_label_tokens} target tokens, "
                  f"padding share {1 - useful[name]:.1%}")
        print(f"packing gain: {useful['packed'] / useful['padded']:.2f}x useful tokens per row position "
              f"(padded mode also drops {cache.num_tokens - cache.num_documents - padded.num_label_tokens} "
              f"target tokens to truncation)")


if __name__ == "__main__":
    main()
