"""Tokenizing spread over processes: work units planned from the file alone (byte ranges, runs of row groups, a
compressed file whole), claimed by file locks, tokenized by forked workers into parts and assembled into the very
cache one process builds in one pass; several processes share the units, a dead holder's unit is taken again, a
stuck one stops the build in one line."""

import contextlib
import fcntl
import gzip
import json
import multiprocessing
import re
import time
from dataclasses import replace

import psutil
import pyarrow
import pyarrow.parquet
import pytest

import pretrain_ds
from minimind.data import (
    DataError,
    build_lock,
    build_or_load_token_cache,
    build_or_load_token_caches,
    data_sources,
    pipeline,
    token_cache_location,
    unit_claims,
)
from minimind.data.token_parts import parts_folder
from minimind.data.work_units import plan_units
from minimind.training import arguments
from minimind.training.arguments import parse_args, run_config
from minimind.training.hardware import cpu as cpu_host

TEXTS = ["The first document.", "第二个文档，中文。", "", "   ", "emoji 🚀 third", "fourth " * 40, "x",
         "ünïcödé ßpläït across a boundary", "a\nnewline inside", "最后"]
# fork: the builds under test fork their workers anyway, and a forked helper needs no imports (spawn: ~5 s each)
FORK = multiprocessing.get_context("fork")


def jsonl_bytes(texts, trailing_newline=True) -> bytes:
    """One JSON object a line (UTF-8, not escaped), a blank line after every fourth, a byte order mark first."""
    lines = []
    for index, text in enumerate(texts):
        lines.append(json.dumps({"text": text}, ensure_ascii=False).encode())
        if index % 4 == 3:
            lines.append(b"")
    data = b"\xef\xbb\xbf" + b"\n".join(lines)
    return data + b"\n" if trailing_newline else data


def expected_tokens(tokenizer, texts) -> list[int]:
    """The independent reference: [bos] + tokens + [eos] for every text that is not blank."""
    return [token for text in texts if text.strip()
            for token in [tokenizer.bos_token_id, *tokenizer.encode(text, add_special_tokens=False),
                          tokenizer.eos_token_id]]


def build(path, tokenizer, cache_dir, **options):
    lines = []
    cache = build_or_load_token_cache(path, tokenizer, cache_dir=cache_dir, show_progress=False, log=lines.append,
                                      **options)
    return cache, lines


def assert_same_cache(cache, reference):
    """Byte-identical tokens.bin and offsets.npy, and the same meta.json."""
    for name in ("tokens.bin", "offsets.npy", "meta.json"):
        assert (cache.path / name).read_bytes() == (reference.path / name).read_bytes(), name
    assert not parts_folder(cache.path).exists()  # the parts go once the cache is assembled


def part_size_with_every_kind_of_boundary(data: bytes) -> int:
    """A part size whose unit boundaries fall mid-line, mid-character, on a newline and just after one, and
    that leaves one unit with no line of its own."""
    for size in range(8, 200):
        boundaries = range(size, len(data), size)
        kinds = {"on newline": any(data[b] == ord("\n") for b in boundaries),
                 "after newline": any(data[b - 1] == ord("\n") for b in boundaries),
                 "mid-character": any(data[b] & 0xC0 == 0x80 for b in boundaries),
                 "inside a line": any(b"\n" not in data[b - size:b + 1] for b in boundaries)}
        if all(kinds.values()):
            return size
    raise AssertionError("no part size gives every kind of boundary")


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_a_parallel_build_is_byte_identical_to_the_single_process_build(tmp_path, tokenizer, trailing_newline):
    data = jsonl_bytes(TEXTS * 3, trailing_newline)
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(data)
    part_bytes = part_size_with_every_kind_of_boundary(data)
    single, _ = build(path, tokenizer, tmp_path / "one", workers=1)
    assert single.tokens.tolist() == expected_tokens(tokenizer, TEXTS * 3)
    spread, lines = build(path, tokenizer, tmp_path / "two", workers=2, part_bytes=part_bytes)
    units = len(plan_units(path, part_bytes))
    assert units > 10 and f"tokenizing {units} units" in lines[0] and "2 worker processes" in lines[0]
    assert_same_cache(spread, single)
    assert single.blank_texts == spread.blank_texts == 2 * 3 + len(TEXTS * 3) // 4  # blank texts and blank lines


def test_parquet_row_groups_and_a_gzip_file_in_one_parallel_build(tmp_path, tokenizer):
    texts = TEXTS + ["", "  "] + TEXTS  # a row group of blank texts only: a unit with no texts
    parquet = tmp_path / "corpus.parquet"
    pyarrow.parquet.write_table(pyarrow.table({"text": texts}), parquet, row_group_size=2)
    compressed = tmp_path / "corpus.jsonl.gz"
    compressed.write_bytes(gzip.compress(jsonl_bytes(TEXTS)))
    assert len(plan_units(parquet, 100)) > 3 and [unit.name for unit in plan_units(compressed, 100)] == ["whole"]
    singles = [build(path, tokenizer, tmp_path / "one")[0] for path in (parquet, compressed)]
    assert singles[0].tokens.tolist() == expected_tokens(tokenizer, texts)
    lines = []
    spread = build_or_load_token_caches([parquet, compressed], tokenizer, cache_dir=tmp_path / "two", workers=2,
                                        part_bytes=100, first=1, show_progress=False, log=lines.append)
    assert "of 2 files with 2 worker processes" in lines[0]
    for cache, single in zip(spread, singles, strict=True):
        assert_same_cache(cache, single)


BAD_LINES = [b'{"text": "unterminated', b'["a list"]', b'{"content": "no text"}', b'{"text": "caf\xe9"}',
             b'{"text": 5}']


def test_skipped_bad_lines_and_blanks_add_up_to_the_single_pass(tmp_path, tokenizer):
    lines = [json.dumps({"text": text}, ensure_ascii=False).encode() for text in TEXTS * 2]
    for index, bad in enumerate(BAD_LINES):
        lines.insert(3 * index + 1, bad)
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    single, _ = build(path, tokenizer, tmp_path / "one", skip_bad_lines=True)
    spread, _ = build(path, tokenizer, tmp_path / "two", skip_bad_lines=True, workers=2, part_bytes=40)
    assert (single.bad_lines, single.blank_texts) == (len(BAD_LINES), 4)
    assert_same_cache(spread, single)


def test_bad_data_in_a_unit_names_the_file_and_byte_offset_and_leaves_no_cache(tmp_path, tokenizer):
    good = [json.dumps({"text": text}, ensure_ascii=False).encode() + b"\n" for text in TEXTS]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"".join(good[:6]) + BAD_LINES[0] + b"\n" + b"".join(good[6:]))
    offset = len(b"".join(good[:6]))
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}:byte {offset}: not valid JSON"):
        build(path, tokenizer, tmp_path / "cache", workers=2, part_bytes=32)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith((".lock", ".parts"))] == []


def test_a_file_of_many_units_without_texts_is_the_readers_own_error(tmp_path, tokenizer):
    path = tmp_path / "blank.jsonl"
    path.write_text('{"text": "  "}\n\n' * 20)
    with pytest.raises(DataError, match=re.escape(f"{path}: no texts (40 lines, 40 blank, 0 bad)")):
        build(path, tokenizer, tmp_path / "cache", workers=2, part_bytes=50)


def slow_encoding(monkeypatch, seconds):
    """Every batch of texts takes ``seconds`` longer (forked processes inherit it), so that processes overlap."""
    encoded = unit_claims.encoded_documents

    def slowly(*args):
        for batch in encoded(*args):
            time.sleep(seconds)
            yield batch

    monkeypatch.setattr(unit_claims, "encoded_documents", slowly)


def build_in_child(path, tokenizer, cache_dir, part_bytes, workers, start, log_path):
    start.wait(30)
    lines = []
    build_or_load_token_cache(path, tokenizer, cache_dir=cache_dir, workers=workers, part_bytes=part_bytes,
                              show_progress=False, log=lines.append)
    log_path.write_text("\n".join(lines))


@pytest.mark.parametrize("workers", [1, 2])  # 1: two ranks of a two-core node, each tokenizing in itself
def test_two_processes_building_one_cache_share_its_units(tmp_path, tokenizer, monkeypatch, workers):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(jsonl_bytes(TEXTS * 4))
    reference, _ = build(path, tokenizer, tmp_path / "one")
    slow_encoding(monkeypatch, 0.05)
    start = FORK.Event()
    logs = [tmp_path / f"log{index}.txt" for index in range(2)]
    builders = [FORK.Process(target=build_in_child, args=(path, tokenizer, tmp_path / "two", 60, workers, start, log))
                for log in logs]
    for builder in builders:
        builder.start()
    start.set()
    for builder in builders:
        builder.join(60)
    assert [builder.exitcode for builder in builders] == [0, 0]
    units = len(plan_units(path, 60))
    tokenized = [int(re.search(r"(\d+) of \d+ units tokenized", log.read_text())[1]) for log in logs]
    assert all(count > 0 for count in tokenized) and sum(tokenized) == units, tokenized
    descriptions = sorted(log.read_text().splitlines()[-1].split(":")[0] for log in logs)
    assert descriptions == ["token cache built", "token cache reused"]  # one assembled it, the other loaded it
    cache, _ = build(path, tokenizer, tmp_path / "two")
    assert cache.reused
    assert_same_cache(cache, reference)


def hold_lock(lock_path, line, locked):
    """Take ``lock_path`` as a unit's claimant would, write ``line`` in it and start a part, then hang."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(line)
        handle.flush()
        lock_path.with_suffix(".part.node7.12.tmp").write_bytes(b"half a part")
        locked.set()
        time.sleep(600)


def held_unit(path, tokenizer, cache_dir, part_bytes, index, line):
    """A forked process holding the lock of unit ``index`` of ``path``'s cache, as a claimant that hangs."""
    location = token_cache_location(path, tokenizer, cache_dir=cache_dir)
    lock_path = parts_folder(location.folder) / f"{plan_units(path, part_bytes)[index].name}.lock"
    locked = FORK.Event()
    holder = FORK.Process(target=hold_lock, args=(lock_path, line, locked), daemon=True)
    holder.start()
    assert locked.wait(30)
    return holder, lock_path


def test_a_unit_whose_holder_dies_is_taken_and_finished(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(build_lock, "POLL_S", 0.1)
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(jsonl_bytes(TEXTS * 2))
    reference, _ = build(path, tokenizer, tmp_path / "one")
    holder, _ = held_unit(path, tokenizer, tmp_path / "two", 80, 2, "node7 pid 12, 3 s: tokenized 0.0 of 0.0 MiB")
    lines = []

    def log(line):  # the holder dies once this process waits for it alone
        lines.append(line)
        if "waiting for" in line:
            holder.kill()

    try:
        cache = build_or_load_token_cache(path, tokenizer, cache_dir=tmp_path / "two", workers=2, part_bytes=80,
                                          show_progress=False, log=log)
    finally:
        holder.kill()
    units = len(plan_units(path, 80))
    assert any("waiting for 1 unit that other processes hold (node7 pid 12" in line for line in lines)
    assert f"{units} of {units} units tokenized by this process" in "\n".join(lines)
    assert_same_cache(cache, reference)


def test_a_unit_held_with_no_progress_stops_the_build_in_one_line(tmp_path, tokenizer, monkeypatch):
    """A network file system may keep a crashed node's lock: the build stops naming the unit's lock file."""
    monkeypatch.setattr(build_lock, "STALE_AFTER_S", 1.0)
    monkeypatch.setattr(build_lock, "POLL_S", 0.1)
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(jsonl_bytes(TEXTS * 2))
    holder, lock_path = held_unit(path, tokenizer, tmp_path / "cache", 80, 1, "node7 pid 12, 30 s: tokenized")
    try:
        with pytest.raises(DataError, match=rf"{re.escape(str(lock_path))}: held with no progress for .* \(node7"):
            build(path, tokenizer, tmp_path / "cache", workers=2, part_bytes=80)
    finally:
        holder.kill()


def test_workers_end_with_the_rank_that_forked_them(tmp_path, tokenizer, monkeypatch):
    """A launcher that kills a rank (SIGKILL: no exit handler runs) must not leave its workers tokenizing."""
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(jsonl_bytes(TEXTS * 20))  # 100 units of a second each: minutes of work left at the kill
    slow_encoding(monkeypatch, 1.0)
    start = FORK.Event()
    rank = FORK.Process(target=build_in_child, args=(path, tokenizer, tmp_path / "cache", 60, 2, start,
                                                     tmp_path / "log.txt"))
    rank.start()
    start.set()
    deadline = time.monotonic() + 30
    while len(workers := psutil.Process(rank.pid).children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(workers) == 2
    rank.kill()
    rank.join()
    try:
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not [worker for worker in alive if worker.status() != psutil.STATUS_ZOMBIE], alive
    finally:
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()


def test_a_bad_tokenize_workers_value_is_one_line(tmp_path, capsys):
    status = pretrain_ds.main(["--save_dir", str(tmp_path), "--tokenize_workers", "-1"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.count("\n") == 0, err
    assert "--tokenize_workers: must be at least 0, got -1" in err


@pytest.mark.parametrize("flag, expected", [(0, 4), (3, 3)])
def test_tokenize_workers_zero_is_the_ranks_share_of_the_cores(monkeypatch, tmp_path, flag, expected):
    (tmp_path / "a.jsonl").write_text('{"text": "a"}\n')
    monkeypatch.setattr(cpu_host, "available_cores", lambda: 16)
    monkeypatch.setattr(cpu_host, "node_cores", lambda: 16)
    monkeypatch.setenv("LOCAL_SIZE", "4")  # four ranks on this node
    monkeypatch.setattr(arguments, "set_cpu_threads", lambda: "torch's threads left alone")
    flags = ["--tokenize_workers", str(flag), "--deepspeed_config", "ds_configs/zero2_fp32.json"]
    settings = run_config(parse_args(flags), cpu_only=True).data
    assert settings.tokenize_workers == expected
    calls = []
    monkeypatch.setattr(pipeline, "build_or_load_token_caches", lambda *args, **options: calls.append(options))
    one_file = replace(settings, sources=tuple(data_sources([str(tmp_path / "a.jsonl")])))
    pipeline.training_caches(one_file, None, (None,), local_rank=0, log=print)
    assert calls[0]["workers"] == expected
