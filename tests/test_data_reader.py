"""The JSON Lines reader: texts stream out, every kind of bad input is a one-line DataError naming file:line."""

import json
import random
import re

import pytest

from minimind.data import DataError, JsonlTextReader, validate_texts

GOOD = json.dumps({"text": "a good line"})


def write_lines(path, lines: list[bytes | str]) -> str:
    path.write_bytes(b"".join((line.encode() if isinstance(line, str) else line) + b"\n" for line in lines))
    return str(path)


def test_reads_texts_in_order_and_counts_blank(tmp_path):
    path = write_lines(tmp_path / "ok.jsonl", [
        GOOD,
        json.dumps({"text": "中文 text", "id": 7}, ensure_ascii=False),
        json.dumps({"text": "  \n\t"}),
        "",
        "   ",
        json.dumps({"text": "last"}),
    ])
    reader = JsonlTextReader(path)
    assert list(reader) == ["a good line", "中文 text", "last"]
    assert (reader.counts.texts, reader.counts.blank, reader.counts.bad_lines) == (3, 3, 0)
    assert reader.counts.bytes_read == (tmp_path / "ok.jsonl").stat().st_size


def test_accepts_bom_crlf_and_missing_final_newline(tmp_path):
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\r\n" + json.dumps({"text": "two"}).encode())
    assert list(JsonlTextReader(path)) == ["a good line", "two"]


BAD_LINES = {
    "malformed JSON": (b'{"text": "unterminated', "not valid JSON"),
    "truncated object": (b'{"text": "ok"', "not valid JSON"),
    "not an object": (b'["text", "in a list"]', "got list"),
    "no text field": (b'{"content": "wrong key"}', 'found no'),
    "text not a string": (b'{"text": 42}', "found int"),
    "null text": (b'{"text": null}', "found no"),
    "invalid UTF-8": (b'{"text": "caf\xe9"}', "invalid UTF-8"),
    "deep nesting": (b'{"text": "x", "n": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "nested too deeply"),
    "lone surrogate": (b'{"text": "broken \\ud800 pair"}', "lone surrogate"),
    "huge integer": (b'{"text": "x", "n": ' + b"9" * 5000 + b"}", "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_line_names_file_and_line(tmp_path, case):
    bad, reason = BAD_LINES[case]
    path = write_lines(tmp_path / "data.jsonl", [GOOD, "", bad, GOOD])
    with pytest.raises(DataError) as info:
        list(JsonlTextReader(path))
    message = str(info.value)
    assert message.startswith(f"{path}:3: ") and reason in message and "\n" not in message
    assert (info.value.path, info.value.line) == (path, 3)


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_skip_bad_lines_skips_and_counts(tmp_path, case):
    path = write_lines(tmp_path / "data.jsonl", [GOOD, BAD_LINES[case][0], GOOD])
    reader = JsonlTextReader(path, skip_bad_lines=True)
    assert list(reader) == ["a good line", "a good line"]
    assert reader.counts.bad_lines == 1


def test_overlong_line_is_bad_and_skipped_whole(tmp_path):
    long_line = json.dumps({"text": "x" * 5000})
    path = write_lines(tmp_path / "long.jsonl", [GOOD, long_line, json.dumps({"text": "after"})])
    with pytest.raises(DataError, match=f"^{re.escape(path)}:2: line longer than 1000 bytes"):
        list(JsonlTextReader(path, max_line_bytes=1000))
    reader = JsonlTextReader(path, skip_bad_lines=True, max_line_bytes=1000)
    assert list(reader) == ["a good line", "after"]
    assert reader.counts.bad_lines == 1


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: no texts"):
        validate_texts(path)


def test_file_of_only_blank_or_skipped_lines_is_an_error(tmp_path):
    path = write_lines(tmp_path / "blank.jsonl", [json.dumps({"text": " "}), "not json"])
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: no texts"):
        validate_texts(path, skip_bad_lines=True)


def test_missing_file_is_an_error(tmp_path):
    path = tmp_path / "nowhere.jsonl"
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: cannot open"):
        validate_texts(path)


def test_validate_returns_counts(tmp_path):
    path = write_lines(tmp_path / "ok.jsonl", [GOOD, json.dumps({"text": ""}), "oops", GOOD])
    counts = validate_texts(path, skip_bad_lines=True)
    assert (counts.texts, counts.blank, counts.bad_lines) == (2, 1, 1)


def _fuzz_line(rng: random.Random) -> bytes:
    good = json.dumps({"text": "".join(rng.choice("ab 中😀\\\"\n") for _ in range(rng.randint(0, 40)))},
                      ensure_ascii=rng.random() < 0.5).encode()
    kind = rng.randrange(7)
    if kind == 0:
        return good
    if kind == 1:
        return rng.randbytes(rng.randint(0, 200))
    if kind == 2:
        return good[:rng.randint(0, len(good))]
    if kind == 3:
        mutated = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        return bytes(mutated)
    if kind == 4:
        depth = rng.choice([10, 1000, 100_000])
        opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
        return b'{"text": "x", "deep": ' + opener * depth + b"1" + closer * rng.randint(0, depth) + b"}"
    if kind == 5:
        return b'{"text": "' + b"y" * rng.randint(1000, 300_000) + b'"}'
    return rng.choice([b"", b"   ", b"null", b"true", b"[]", b"{}", b'{"text": []}', b"\x00", b"\\ud800"])


@pytest.mark.parametrize("skip_bad_lines", [False, True])
def test_fuzz_only_data_errors(tmp_path, skip_bad_lines):
    rng = random.Random(1234 + skip_bad_lines)
    path = tmp_path / "fuzz.jsonl"
    for _ in range(150):
        lines = [_fuzz_line(rng) for _ in range(rng.randint(0, 8))]
        path.write_bytes(b"\n".join(lines) + rng.choice([b"", b"\n"]))
        reader = JsonlTextReader(path, skip_bad_lines=skip_bad_lines, max_line_bytes=100_000)
        try:
            texts = list(reader)
        except DataError as error:
            assert "\n" not in str(error) and str(error).startswith(str(path))
        else:
            assert all(isinstance(text, str) and text.strip() for text in texts)
            for text in texts:
                text.encode("utf-8")  # tokenizable: no lone surrogates slipped through
