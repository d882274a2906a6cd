"""Data files beyond one plain JSON Lines file: gzip and Zstandard JSON Lines and Parquet give the token
stream of their JSON Lines twin, read by another field or column too; files, globs and folders name
several files, read as their concatenation with a cache each; a vocabulary past 65,535 gets a uint32
cache; bad files are one line naming the file and the line, or the row group and row."""

import gzip
import json
import re

import numpy as np
import pyarrow
import pyarrow.parquet
import pytest
import torch
import zstandard

from minimind.data import (
    Corpus,
    DataError,
    PackedWindows,
    build_or_load_token_cache,
    data_files,
    document_stream,
    split_documents,
    text_reader,
    validate_texts,
)
from minimind.tokenizer.loader import load_tokenizer

TEXTS = ["first document, plain ASCII", "", "second: émigré naïve 数据 🙂", "   ", "third\nwith a newline",
         "fourth " * 50]


def write_jsonl(path, texts, field="text"):
    """One ``{field: text}`` object a line."""
    path.write_text("".join(json.dumps({field: text}) + "\n" for text in texts), encoding="utf-8")
    return path


def write_parquet(path, texts, field="text", row_group_size=2):
    """A one-column Parquet file of ``texts`` in row groups of ``row_group_size``."""
    pyarrow.parquet.write_table(pyarrow.table({field: texts}), path, row_group_size=row_group_size)
    return path


def twins(folder, field="text"):
    """The same texts as JSON Lines, gzip and Zstandard JSON Lines, and Parquet."""
    plain = write_jsonl(folder / "corpus.jsonl", TEXTS, field)
    (folder / "corpus.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    (folder / "corpus.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    write_parquet(folder / "corpus.parquet", TEXTS, field)
    return [folder / name for name in ("corpus.jsonl", "corpus.jsonl.gz", "corpus.jsonl.zst", "corpus.parquet")]


@pytest.mark.parametrize("field", ["text", "content"])
def test_every_format_gives_the_token_stream_of_its_json_lines_twin(tmp_path, field):
    tokenizer = load_tokenizer()
    caches = [build_or_load_token_cache(path, tokenizer, cache_dir=tmp_path / "cache", text_field=field,
                                        show_progress=False, log=lambda line: None) for path in twins(tmp_path, field)]
    kept = [text for text in TEXTS if text.strip()]
    expected = [token for text in kept for token in
                [tokenizer.bos_token_id, *tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id]]
    for cache in caches:
        assert cache.tokens.dtype == np.uint16 and cache.tokens.tolist() == expected
        assert np.array_equal(cache.offsets, caches[0].offsets) and cache.blank_texts == 2
    assert len({cache.path for cache in caches}) == 4  # one cache per file


def test_a_vocabulary_past_65535_gets_a_uint32_cache(tmp_path):
    tokenizer = load_tokenizer()
    tokenizer.add_tokens([f"<extra_{index}>" for index in range(60_000)])
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    tokenizer = load_tokenizer(tmp_path / "tokenizer")
    assert len(tokenizer) > 65_536
    texts = ["a <extra_59999> b <extra_3>", "plain words"]
    cache = build_or_load_token_cache(write_jsonl(tmp_path / "wide.jsonl", texts), tokenizer,
                                      cache_dir=tmp_path / "cache", show_progress=False, log=lambda line: None)
    assert cache.tokens.dtype == np.uint32
    expected = [token for text in texts for token in
                [tokenizer.bos_token_id, *tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id]]
    assert cache.tokens.tolist() == expected and max(expected) == tokenizer.convert_tokens_to_ids("<extra_59999>")
    window = PackedWindows(cache.tokens, max_seq_len=len(expected) - 1)[0]
    assert window["input_ids"].tolist() == expected[:-1] and window["targets"].tolist() == expected[1:]
    again = build_or_load_token_cache(tmp_path / "wide.jsonl", tokenizer, cache_dir=tmp_path / "cache",
                                      show_progress=False, log=lambda line: None)
    assert again.reused and again.tokens.dtype == np.uint32 and again.tokens.tolist() == expected


def bad_files(folder):
    """``(path, text_field, expected message)`` of every kind of bad file."""
    lines = '{"text": "ok"}\n{"text": "fine"}\n{"text": broken}\n'
    (folder / "bad.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    (folder / "bad.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    (folder / "corrupt.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00not gzip at all")
    (folder / "corrupt.parquet").write_bytes(b"PAR1 not parquet")
    (folder / "data.csv").write_text("text\nhello\n")
    write_parquet(folder / "other_column.parquet", ["a", "b"], field="content")
    write_parquet(folder / "null.parquet", ["a", "b", "c", None, "e"])
    pyarrow.parquet.write_table(pyarrow.table({"text": [1, 2]}), folder / "numbers.parquet")
    return [
        (folder / "bad.jsonl.gz", "text", f"{folder / 'bad.jsonl.gz'}:3: not valid JSON"),
        (folder / "bad.jsonl.zst", "text", f"{folder / 'bad.jsonl.zst'}:3: not valid JSON"),
        (folder / "bad.jsonl.zst", "body", f'{folder / "bad.jsonl.zst"}:1: expected a "body" string, found no'),
        (folder / "corrupt.jsonl.gz", "text", f"{folder / 'corrupt.jsonl.gz'}: cannot decompress"),
        (folder / "corrupt.parquet", "text", f"{folder / 'corrupt.parquet'}: cannot read as Parquet"),
        (folder / "data.csv", "text", f"{folder / 'data.csv'}: not a data file this run reads"),
        (folder / "other_column.parquet", "text", "no column 'text' (columns: content; --text_field names another)"),
        (folder / "null.parquet", "text", f'{folder / "null.parquet"}:row group 1:row 1: expected a "text" string, '
                                          "found null"),
        (folder / "numbers.parquet", "text", f'{folder / "numbers.parquet"}:row group 0:row 0: expected a "text" '
                                             "string, found int"),
    ]


def test_bad_files_are_one_line_naming_the_line_or_row(tmp_path):
    for path, field, message in bad_files(tmp_path):
        with pytest.raises(DataError) as error:
            validate_texts(path, text_field=field)
        assert message in str(error.value) and "\n" not in str(error.value), (path, str(error.value))


def test_bad_rows_are_skipped_and_counted_when_asked(tmp_path):
    write_parquet(tmp_path / "null.parquet", ["a", None, " ", "d"])
    reader = text_reader(tmp_path / "null.parquet", skip_bad_lines=True)
    assert list(reader) == ["a", "d"] and (reader.counts.bad_lines, reader.counts.blank) == (1, 1)
    assert reader.counts.bytes_read == (tmp_path / "null.parquet").stat().st_size


def test_entries_name_files_globs_and_folders_once_each_in_order(tmp_path):
    for name in ("b.jsonl", "a.parquet", "c.jsonl.gz", "notes.txt"):
        (tmp_path / name).write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.jsonl").write_text("")
    assert data_files([str(tmp_path)]) == [tmp_path / "a.parquet", tmp_path / "b.jsonl", tmp_path / "c.jsonl.gz"]
    assert data_files([str(tmp_path / "sub" / "z.jsonl"), str(tmp_path / "*.jsonl*"), str(tmp_path / "b.jsonl")]) \
        == [tmp_path / "sub" / "z.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl.gz"]
    (tmp_path / "empty").mkdir()
    for entry, message in ((tmp_path / "*.arrow", "the pattern matches no file"),
                           (tmp_path / "empty", "no data file in the folder"),
                           (tmp_path / "missing.jsonl", "no such file or folder")):
        with pytest.raises(DataError, match=re.escape(f"{entry}: {message}")):
            data_files([str(entry)])


def test_several_files_read_as_their_concatenation_and_added_files_alone_are_tokenized(tmp_path):
    tokenizer = load_tokenizer()
    parts = [TEXTS[:2], TEXTS[2:5], TEXTS[5:]]
    paths = [write_jsonl(tmp_path / "a.jsonl", parts[0]), write_parquet(tmp_path / "b.parquet", parts[1]),
             write_jsonl(tmp_path / "c.jsonl", parts[2])]
    whole = build_or_load_token_cache(write_jsonl(tmp_path / "whole.jsonl", TEXTS), tokenizer,
                                      cache_dir=tmp_path / "cache", show_progress=False, log=lambda line: None)

    def caches(files):
        return [build_or_load_token_cache(path, tokenizer, cache_dir=tmp_path / "cache", show_progress=False,
                                          log=lambda line: None) for path in files]

    assert not any(cache.reused for cache in caches(paths[:2]))
    three = caches(paths)
    assert [cache.reused for cache in three] == [True, True, False]  # only the added file is tokenized
    corpus = Corpus.of(three)
    assert np.array_equal(corpus.offsets, whole.offsets) and len(corpus.tokens) == len(whole.tokens)
    rng = np.random.default_rng(0)
    for _ in range(100):
        start, stop = sorted(rng.integers(0, len(whole.tokens) + 2, 2).tolist())
        assert np.array_equal(corpus.tokens[start:stop], whole.tokens[start:stop])
    packed, reference = PackedWindows(corpus.tokens, 7), PackedWindows(whole.tokens, 7)
    assert len(packed) == len(reference)
    assert all(torch.equal(packed[i]["input_ids"], reference[i]["input_ids"]) for i in range(len(packed)))
    split = split_documents(corpus.num_documents, 0.5)  # held-out documents across the files' boundaries
    for documents in (split.train, split.held_out):
        stream, expected = (document_stream(tokens, offsets, documents)
                            for tokens, offsets in ((corpus.tokens, corpus.offsets), (whole.tokens, whole.offsets)))
        assert len(stream) == len(expected) and np.array_equal(stream[0:len(stream)], expected[0:len(expected)])
