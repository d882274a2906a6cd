"""Streaming reader for pretraining data in JSON Lines: one ``{"text": "..."}`` object per line,
plain, gzip-compressed (``.jsonl.gz``) or Zstandard-compressed (``.jsonl.zst``).

Memory use is bounded by the longest line (``max_line_bytes``), never by the file size; a
compressed file is decompressed as it streams. Every problem with the input raises
:class:`DataError` with a one-line message that names the file and, where there is one, the
line: ``data/x.jsonl:17: not valid JSON (...)``.
"""

import codecs
import contextlib
import gzip
import io
import json
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from minimind.errors import UserInputError

MAX_LINE_BYTES = 64 * 2**20
COMPRESSED_SUFFIXES = (".gz", ".zst")  # what ``decompressed`` reads through


class DataError(UserInputError):
    """Unusable training data; ``path`` and ``line`` (1-based, or None) say where."""

    def __init__(self, path: str | Path, line: int | None, reason: str):
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {reason}")


@dataclass
class ReadCounts:
    """What one pass over a file found; ``bytes_read`` grows during the pass (for progress bars)."""

    texts: int = 0
    blank: int = 0
    bad_lines: int = 0
    bytes_read: int = 0


class JsonlTextReader:
    """Iterable over the texts of a JSON Lines file, validating every line as it streams.

    Blank texts (empty or whitespace-only, and blank lines) are skipped and counted. A bad line
    (not UTF-8, not JSON, not an object with a ``text_field`` string, longer than ``max_line_bytes``)
    raises :class:`DataError`, or is skipped and counted when ``skip_bad_lines``. A file with
    no texts at all raises :class:`DataError` at the end of the pass. ``counts`` describes the
    pass in progress or the last one (``bytes_read`` counts the file's bytes, compressed or not);
    each iteration starts a fresh pass.

    ``byte_range=(start, end)`` (a plain file only) reads the lines whose first byte lies in it, the
    last one through its end, so that ranges that tile the file read each line once. Such a part
    may hold no texts, and its errors name the line's byte offset (``file:byte 1234: ...``), since
    the line number is not known there.
    """

    def __init__(self, path: str | Path, *, skip_bad_lines: bool = False,
                 max_line_bytes: int = MAX_LINE_BYTES, text_field: str = "text",
                 byte_range: tuple[int, int] | None = None):
        self.path = Path(path)
        if byte_range is not None and self.path.suffix in COMPRESSED_SUFFIXES:
            raise ValueError(f"a byte range of a compressed file ({self.path}) is not a range of its lines")
        self.skip_bad_lines = skip_bad_lines
        self.max_line_bytes = max_line_bytes
        self.text_field = text_field
        self.byte_range = byte_range
        self.counts = ReadCounts()

    def __iter__(self) -> Iterator[str]:
        self.counts = ReadCounts()
        try:
            file = open(self.path, "rb")
        except OSError as error:
            raise DataError(self.path, None, f"cannot open ({error.strerror or error})") from None
        start, end = self.byte_range or (0, math.inf)
        with file, decompressed(file, self.path) as handle:
            if start > 0:  # the line that crosses ``start`` (or ends just before it) is the previous range's
                file.seek(start - 1)
                _skip_rest_of_line(file)
            line_number = 0
            while (offset := file.tell()) < end and (raw := read_line(handle, self.path, self.max_line_bytes)):
                line_number += 1
                self.counts.bytes_read = min(file.tell(), end) - start
                where = (self.path, line_number) if self.byte_range is None else (f"{self.path}:byte {offset}", None)
                try:
                    if len(raw) > self.max_line_bytes and not raw.endswith(b"\n"):
                        _skip_rest_of_line(handle)
                        raise DataError(*where, f"line longer than {self.max_line_bytes} bytes")
                    text = self._parse(raw, where, first=line_number == 1 and start == 0)
                except DataError:
                    if not self.skip_bad_lines:
                        raise
                    self.counts.bad_lines += 1
                    continue
                if text is None or not text.strip():
                    self.counts.blank += 1
                    continue
                self.counts.texts += 1
                yield text
            self.counts.bytes_read = min(file.tell(), end) - start
        if self.counts.texts == 0 and self.byte_range is None:
            raise DataError(self.path, None, f"no texts ({line_number} lines, {self.counts.blank} blank, "
                                             f"{self.counts.bad_lines} bad)")

    def _parse(self, raw: bytes, where: tuple[str | Path, int | None], first: bool) -> str | None:
        """Return the line's text, None for a blank line; raise DataError at ``where`` (file and line) for a bad
        one. Only the ``first`` line of the file may start with a byte order mark."""
        record = parse_object(raw, where, first, f'an object with a "{self.text_field}" string')
        if record is None:
            return None
        text = record.get(self.text_field)
        if not isinstance(text, str):
            found = "no" if text is None else type(text).__name__
            raise DataError(*where, f'expected a "{self.text_field}" string, found {found}')
        if b"\\u" in raw:
            # Only a \u escape can smuggle a lone surrogate in, which no tokenizer can encode.
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise DataError(*where, '"text" holds a lone surrogate escape') from None
        return text


def read_line(handle: BinaryIO, path: Path, max_line_bytes: int) -> bytes:
    """The next line of ``handle`` (at most ``max_line_bytes + 1`` bytes of it); a corrupt compressed stream is a
    ``DataError`` naming ``path``."""
    try:
        return handle.readline(max_line_bytes + 1)
    except (OSError, EOFError, ValueError, zlib.error) as error:  # BadGzipFile, ZstdError, truncation
        raise DataError(path, None, f"cannot decompress ({type(error).__name__}: {error})") from None


def parse_object(raw: bytes, where: tuple[str | Path, int | None], first: bool, expected: str) -> dict | None:
    """The JSON object on the line ``raw``, None for a blank line; a line that is not UTF-8, not JSON or not an
    object is a DataError at ``where`` (``expected`` names what the line should hold). Only the ``first`` line of
    a file may start with a byte order mark."""
    if first and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    if not raw.strip():
        return None
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(*where, f"invalid UTF-8 at byte {error.start} of the line") from None
    try:
        record = json.loads(line)
    except ValueError as error:
        raise DataError(*where, f"not valid JSON ({error})") from None
    except RecursionError:
        raise DataError(*where, "not valid JSON (nested too deeply)") from None
    if not isinstance(record, dict):
        raise DataError(*where, f"expected {expected}, got {type(record).__name__}")
    return record


def decompressed(file: BinaryIO, path: Path) -> BinaryIO:
    """``file`` read through gzip (``.gz``) or Zstandard (``.zst``), as its name says (``COMPRESSED_SUFFIXES``);
    else ``file`` itself."""
    if path.suffix == ".gz":
        return gzip.GzipFile(fileobj=file, mode="rb")
    if path.suffix == ".zst":
        import zstandard  # only for .zst files

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(file, closefd=False))
    return contextlib.nullcontext(file)


def _skip_rest_of_line(handle) -> None:
    """Read past the end of the current line."""
    while chunk := handle.readline(2**20):
        if chunk.endswith(b"\n"):
            break
