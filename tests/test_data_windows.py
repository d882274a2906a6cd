"""Packed windows and padded documents against independent computations on synthetic token arrays."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from minimind.data import IGNORE_INDEX, PackedWindows, PaddedDocuments, build_or_load_token_cache
from minimind.tokenizer.loader import load_tokenizer


def synthetic_cache(lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Documents ``[1] + text + [2]`` with ``lengths[d]`` text tokens in 3..6399, as the token cache stores them."""
    rng = np.random.default_rng(seed)
    documents = [np.concatenate([[1], rng.integers(3, 6400, length), [2]]) for length in lengths]
    offsets = np.concatenate([[0], np.cumsum([len(document) for document in documents])])
    return np.concatenate(documents).astype(np.uint16), offsets.astype(np.int64)


def expected_row(ids: list[int], max_seq_len: int) -> tuple[list[int], list[int]]:
    """The MiniMind-style row: pad ids with 0 to max_seq_len + 1, shift, mask padded targets with -100."""
    padded = ids + [0] * (max_seq_len + 1 - len(ids))
    labels = [token if position + 1 < len(ids) else IGNORE_INDEX for position, token in enumerate(padded[1:])]
    return padded[:-1], labels


@pytest.mark.parametrize("max_seq_len", [1, 7, 16, 64, 1000])
def test_packed_windows_cover_the_stream_exactly_once(max_seq_len):
    tokens, _ = synthetic_cache([5, 0, 40, 13, 120, 1, 77])
    windows = PackedWindows(tokens, max_seq_len)
    stream = tokens.astype(np.int64).tolist()
    assert len(windows) == -(-len(stream) // (max_seq_len + 1))
    label_tokens = 0
    for index in range(len(windows)):
        sample = windows[index]
        chunk = stream[index * (max_seq_len + 1):(index + 1) * (max_seq_len + 1)]
        input_ids, labels = expected_row(chunk, max_seq_len)
        assert sample["input_ids"].dtype == sample["targets"].dtype == torch.long
        assert sample["input_ids"].shape == sample["targets"].shape == (max_seq_len,)
        assert sample["input_ids"].tolist() == input_ids
        assert sample["targets"].tolist() == labels
        label_tokens += int((sample["targets"] != IGNORE_INDEX).sum())
    assert windows.num_label_tokens == label_tokens == len(stream) - len(windows)
    with pytest.raises(IndexError):
        windows[len(windows)]


def test_full_windows_have_no_padding():
    tokens, _ = synthetic_cache([30, 30, 30])
    windows = PackedWindows(tokens[:96], 31)
    assert len(windows) == 3
    assert all((windows[i]["targets"] != IGNORE_INDEX).all() for i in range(3))


@pytest.mark.parametrize("max_seq_len", [2, 5, 16, 200])
def test_padded_documents_truncate_pad_and_mask(max_seq_len):
    lengths = [0, 1, 3, 4, 14, 15, 16, 17, 150]
    tokens, offsets = synthetic_cache(lengths, seed=1)
    dataset = PaddedDocuments(tokens, offsets, max_seq_len)
    assert len(dataset) == len(lengths)
    label_tokens = 0
    for index in range(len(lengths)):
        document = tokens[offsets[index]:offsets[index + 1]].astype(np.int64).tolist()
        text = document[1:-1]
        kept = [1] + text[:max_seq_len - 1] + [2]  # MiniMind: bos + first max_seq_len - 1 text tokens + eos
        input_ids, labels = expected_row(kept, max_seq_len)
        sample = dataset[index]
        assert sample["input_ids"].tolist() == input_ids
        assert sample["targets"].tolist() == labels
        label_tokens += int((sample["targets"] != IGNORE_INDEX).sum())
    assert dataset.num_label_tokens == label_tokens


def test_padded_mode_wastes_more_than_packing_on_short_documents():
    tokens, offsets = synthetic_cache([10, 20, 5, 30] * 10)
    packed, padded = PackedWindows(tokens, 64), PaddedDocuments(tokens, offsets, 64)
    packed_waste = 1 - packed.num_label_tokens / (len(packed) * 64)
    padded_waste = 1 - padded.num_label_tokens / (len(padded) * 64)
    assert packed_waste < 0.1 < 0.5 < padded_waste


def test_rejects_bad_lengths():
    tokens, offsets = synthetic_cache([3])
    with pytest.raises(ValueError):
        PackedWindows(tokens, 0)
    with pytest.raises(ValueError):
        PaddedDocuments(tokens, offsets, 1)


@pytest.mark.parametrize("family", ["minimind2", "minimind3"])
def test_padded_rows_are_minimind_pretrain_dataset_rows(family, tmp_path):
    """``--packing 0``: each row is the one the family's MiniMind ``PretrainDataset`` makes of the same text
    (recorded from upstream's code by ``tests/upstream/make_pretrain_rows.py``), read from the project's token
    cache; MiniMind's ``max_length`` rows are ``max_seq_len = max_length - 1`` inputs here."""
    fixture = json.loads((Path(__file__).parent / "upstream" / "pretrain_rows.json").read_text(encoding="utf-8"))
    corpus = tmp_path / "pretrain.jsonl"
    corpus.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in fixture["texts"]),
                      encoding="utf-8")
    cache = build_or_load_token_cache(corpus, load_tokenizer(None), cache_dir=tmp_path / "cache",
                                      show_progress=False, log=lambda line: None)
    rows = PaddedDocuments(cache.tokens, cache.offsets, fixture["max_length"] - 1, rows=family)
    assert len(rows) == len(fixture["rows"][family])
    for index, upstream in enumerate(fixture["rows"][family]):
        sample = rows[index]
        if family == "minimind2":  # (X, Y, loss_mask)
            x, y, mask = (torch.tensor(part) for part in upstream)
            expected_inputs, expected_targets = x, torch.where(mask.bool(), y, IGNORE_INDEX)
        else:  # (input_ids, labels), shifted inside MiniMind's model
            input_ids, labels = (torch.tensor(part) for part in upstream)
            expected_inputs, expected_targets = input_ids[:-1], labels[1:]
        assert torch.equal(sample["input_ids"], expected_inputs), (index, fixture["texts"][index])
        assert torch.equal(sample["targets"], expected_targets), (index, fixture["texts"][index])
