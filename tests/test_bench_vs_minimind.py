"""``python -m bench.vs_minimind`` at toy size, and its baseline's rows against MiniMind's PretrainDataset by hand."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.vs_minimind import Side, minimind_rows, optimizer_steps, profile_top_ops
from minimind.data import PaddedDocuments, RankInvariantSampler, build_or_load_token_cache, default_corpus_path
from minimind.tokenizer import load_tokenizer
from minimind.training.arguments import parse_args as parse_trainer_flags
from minimind.training.ds_config.load import BatchPlan

REPO_ROOT = Path(__file__).resolve().parents[1]
TOY = ["--hidden_size", "64", "--num_hidden_layers", "2", "--max_seq_len", "64", "--steps", "2"]
SEED = parse_trainer_flags([]).seed  # pretrain_ds.py's default --seed, which the benchmark's samplers use


def minimind_pretrain_row(text: str, tokenizer, max_seq_len: int) -> tuple[list[int], list[int], list[int]]:
    """MiniMind's PretrainDataset.__getitem__ for a row of max_seq_len + 1 tokens: bos + text tokens (truncated
    to leave room for eos) + eos, padded; X = row[:-1], Y = row[1:], loss_mask = Y != pad."""
    text_ids = tokenizer(text, add_special_tokens=False, max_length=max_seq_len - 1, truncation=True).input_ids
    row = [tokenizer.bos_token_id, *text_ids, tokenizer.eos_token_id]
    row += [tokenizer.pad_token_id] * (max_seq_len + 1 - len(row))
    next_tokens = row[1:]
    return row[:-1], next_tokens, [int(token != tokenizer.pad_token_id) for token in next_tokens]


def test_toy_run_prints_a_ratio_and_finite_first_losses(launch_dir):
    """A whole benchmark run in a subprocess, its figures under ``launch_dir``."""
    out = launch_dir / "vs_minimind.json"
    result = subprocess.run([sys.executable, "-m", "bench.vs_minimind", *TOY, "--json", str(out)], cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    printed = re.search(r"useful tokens/s, ours / MiniMind: (\d+\.\d+)x", result.stdout)
    assert printed, result.stdout[-3000:]
    figures = json.loads(out.read_text())
    assert float(printed.group(1)) == pytest.approx(figures["ratio"]["useful_tokens_per_s"], abs=0.006)
    assert figures["settings"]["command"] == (
        "pretrain_ds.py --deepspeed_config ds_configs/zero2_fp32.json --hidden_size 64 --num_hidden_layers 2 "
        "--max_seq_len 64 --batch_size 8")
    assert figures["settings"]["accumulation"] == 8  # zero2_fp32.json's value
    uniform = math.log(figures["settings"]["vocab_size"])  # a freshly initialised model predicts about uniformly
    for name in ("ours", "minimind"):
        side = figures["sides"][name]
        assert len(side["seconds"]) == 2 and len(side["losses"]) == 3  # 1 warm-up + 2 timed steps
        assert math.isfinite(side["losses"][0]) and abs(side["losses"][0] - uniform) < 0.5, side["losses"]
        assert side["useful_tokens_per_s"] > 0 and side["positions_per_s"] > 0
        assert all(positions == 8 * 8 * 64 for positions in side["positions"])
    assert figures["sides"]["ours"]["useful_share"] > 0.99  # packed windows: no padding


@pytest.mark.parametrize("max_seq_len", [64, 340])
def test_baseline_rows_are_minimind_pretrain_dataset_rows(max_seq_len):
    tokenizer = load_tokenizer(None)
    corpus = default_corpus_path(show_progress=False)
    cache = build_or_load_token_cache(corpus, tokenizer, show_progress=False, log=lambda line: None)
    texts = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines()]
    padded = PaddedDocuments(cache.tokens, cache.offsets, max_seq_len, pad_id=tokenizer.pad_token_id)
    assert len(padded) == len(texts)  # one document per line of the corpus
    plan = BatchPlan(micro_batch=8, accumulation=8, data_parallel=1, grad_clip=1.0)
    rows = [minimind_rows(batch, tokenizer.pad_token_id) for batch in next(optimizer_steps(padded, plan, SEED))]
    documents = list(RankInvariantSampler(len(padded), micro_batch_size=8, accumulation_steps=8, seed=SEED))[:64]
    expected = [minimind_pretrain_row(texts[document], tokenizer, max_seq_len) for document in documents]
    for key, column in (("X", 0), ("Y", 1), ("loss_mask", 2)):
        got = torch.cat([batch[key] for batch in rows])
        assert got.dtype == torch.long and got.shape == (64, max_seq_len)
        assert got.tolist() == [row[column] for row in expected], key
    lengths = [len(row[1]) - row[1].count(tokenizer.pad_token_id) for row in expected]
    assert min(lengths) < max_seq_len == max(lengths)  # the rows hold padded and truncated documents


def test_profile_lists_the_ops_with_most_self_cpu_time():
    weight = torch.randn(256, 256)

    def step() -> tuple[float, int, int]:
        for _ in range(20):
            torch.mm(weight, weight)
        return 0.0, 1, 1

    ops = profile_top_ops(Side("toy", "toy", "none", step, 1.0), steps=2)
    assert ops[0]["op"] == "aten::mm" and ops[0]["calls"] == 40
    assert ops == sorted(ops, key=lambda op: op["self_cpu_s"], reverse=True)
    assert 0 < sum(op["share"] for op in ops) <= 1 + 1e-9
