"""The token cache: layout, reuse when nothing changed, rebuild when the file, tokenizer or a setting
changes, and no cache left behind by a failed build."""

import json
import os
import re
import threading

import numpy as np
import pytest

from minimind.data import DataError, build_or_load_token_cache, token_cache_location
from minimind.tokenizer import load_tokenizer
from minimind.tokenizer.train import train_tokenizer

TEXTS = ["The first document.", "第二个文档，中文。", "   ", "emoji 🚀 third", "fourth " * 50]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in TEXTS),
                    encoding="utf-8")
    return path


def build(corpus, tokenizer, cache_dir, **options):
    lines = []
    cache = build_or_load_token_cache(corpus, tokenizer, cache_dir=cache_dir, show_progress=False,
                                      log=lines.append, **options)
    return cache, lines


def test_layout_is_bos_tokens_eos_per_document(tmp_path, corpus, tokenizer):
    cache, lines = build(corpus, tokenizer, tmp_path / "cache", batch_texts=2)
    kept = [text for text in TEXTS if text.strip()]
    expected = [[1] + tokenizer.encode(text) + [2] for text in kept]
    assert cache.tokens.dtype == np.uint16 and cache.offsets.dtype == np.int64
    assert cache.num_documents == len(kept) and cache.blank_texts == 1 and cache.bad_lines == 0
    assert cache.num_tokens == sum(map(len, expected))
    for index, document in enumerate(expected):
        assert cache.tokens[cache.offsets[index]:cache.offsets[index + 1]].tolist() == document
    assert not cache.reused and "built" in lines[-1] and "4 documents" in lines[-1]
    assert cache.path.parent == tmp_path / "cache" and cache.path.name.startswith("corpus-")


def test_unchanged_source_reuses_the_cache(tmp_path, corpus, tokenizer):
    first, _ = build(corpus, tokenizer, tmp_path / "cache")
    built_at = (first.path / "tokens.bin").stat().st_mtime_ns
    second, lines = build(corpus, tokenizer, tmp_path / "cache")
    assert second.reused and second.path == first.path and "reused" in lines[-1]
    assert (second.path / "tokens.bin").stat().st_mtime_ns == built_at
    assert np.array_equal(second.tokens, first.tokens)


def test_cache_location_is_built_for_this_content_tokenizer_and_setting_only(tmp_path, corpus, tokenizer):
    cache_dir = tmp_path / "cache"
    assert not token_cache_location(corpus, tokenizer, cache_dir=cache_dir).built
    cache, _ = build(corpus, tokenizer, cache_dir)
    location = token_cache_location(corpus, tokenizer, cache_dir=cache_dir)
    assert location.built and location.folder == cache.path
    reused, _ = build(corpus, tokenizer, cache_dir, location=location)
    assert reused.reused and np.array_equal(reused.tokens, cache.tokens)
    assert not token_cache_location(corpus, tokenizer, cache_dir=cache_dir, skip_bad_lines=True).built
    with corpus.open("a", encoding="utf-8") as handle:
        handle.write("not json\n")  # an edit the cache never saw: the file must be checked again
    assert not token_cache_location(corpus, tokenizer, cache_dir=cache_dir).built


def test_same_size_edit_with_restored_mtime_rebuilds(tmp_path, corpus, tokenizer):
    first, _ = build(corpus, tokenizer, tmp_path / "cache")
    stat = corpus.stat()
    corpus.write_bytes(corpus.read_bytes().replace(b"first", b"FIRST"))
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert corpus.stat().st_size == stat.st_size and corpus.stat().st_mtime_ns == stat.st_mtime_ns
    second, _ = build(corpus, tokenizer, tmp_path / "cache")
    assert not second.reused and second.path != first.path
    assert second.tokens[1:1 + len(tokenizer.encode("The FIRST"))].tolist() == tokenizer.encode("The FIRST")


def test_another_tokenizer_rebuilds(tmp_path, corpus, tokenizer):
    first, _ = build(corpus, tokenizer, tmp_path / "cache")
    tiny = load_tokenizer(train_tokenizer(TEXTS * 3, tmp_path / "tiny", vocab_size=280, show_progress=False))
    second, _ = build(corpus, tiny, tmp_path / "cache")
    assert not second.reused and second.path != first.path
    assert second.tokens[second.offsets[0]:second.offsets[1]].tolist() == [1, *tiny.encode(TEXTS[0]), 2]


def test_another_setting_rebuilds(tmp_path, corpus, tokenizer):
    first, _ = build(corpus, tokenizer, tmp_path / "cache")
    second, _ = build(corpus, tokenizer, tmp_path / "cache", skip_bad_lines=True)
    assert not second.reused and second.path != first.path


def test_bad_input_fails_without_leaving_a_cache(tmp_path, corpus, tokenizer):
    with open(corpus, "a", encoding="utf-8") as handle:
        handle.write('{"text": 5}\n')
    with pytest.raises(DataError, match=f"^{re.escape(str(corpus))}:6: "):
        build(corpus, tokenizer, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == []  # locks, parts only
    assert not list((tmp_path / "cache").glob(".*.parts/*.part"))  # and no part of the failed unit
    skipped, _ = build(corpus, tokenizer, tmp_path / "cache", skip_bad_lines=True)
    assert skipped.bad_lines == 1 and skipped.num_documents == 4


def test_missing_source_is_a_data_error(tmp_path, tokenizer):
    with pytest.raises(DataError, match="cannot read"):
        build(tmp_path / "absent.jsonl", tokenizer, tmp_path / "cache")


def test_disabled_tokenizers_parallelism_is_lifted_for_several_workers_then_restored(tmp_path, corpus, tokenizer,
                                                                                     monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    _, lines = build(corpus, tokenizer, tmp_path / "cache", workers=2)  # one unit: the rank's own threads
    assert any("TOKENIZERS_PARALLELISM" in line for line in lines)
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    _, lines = build(corpus, tokenizer, tmp_path / "one worker")  # one worker is one thread, for this build only
    assert not any("TOKENIZERS_PARALLELISM" in line for line in lines)
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"


def test_default_location_follows_minimind_cache_dir(tmp_path, corpus, tokenizer, monkeypatch):
    monkeypatch.setenv("MINIMIND_CACHE_DIR", str(tmp_path / "root"))
    cache = build_or_load_token_cache(corpus, tokenizer, show_progress=False, log=lambda line: None)
    assert cache.path.parent == tmp_path / "root" / "tokens"


def test_ranks_that_start_together_tokenize_once_and_load_the_same_cache(tmp_path, corpus, tokenizer):
    results = [None, None]

    def rank(index):
        results[index] = build(corpus, tokenizer, tmp_path / "cache")

    threads = [threading.Thread(target=rank, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    (first, _), (second, _) = results
    assert sorted([first.reused, second.reused]) == [False, True]  # built once, reused once
    assert first.path == second.path and np.array_equal(first.tokens, second.tokens)
