"""Work units' tokens on disk: one part file per unit in a parts folder beside its token cache, and their
assembly, in file order, into the cache's tokens and offsets.

A part file holds the unit's documents' tokens, (num_tokens,) of the cache's dtype, then their
lengths, (num_documents,) int64 little-endian, then the unit's counts as JSON, then the JSON's
length (8 bytes, little-endian). It is written under a temporary name and linked to its own when
complete, so a part file that exists is whole, and is never replaced.
"""

import json
import os
import shutil
import socket
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from minimind.data.jsonl_reader import ReadCounts

_TRAILER = struct.Struct("<Q")  # the counts JSON's length, at the end of a part file
_COPY_BYTES = 16 * 2**20


def parts_folder(cache_folder: Path) -> Path:
    """Where the parts of ``cache_folder``'s units are written until the cache is assembled."""
    return cache_folder.with_name(f".{cache_folder.name}.parts")


def part_path(cache_folder: Path, unit_name: str) -> Path:
    """The part file of the work unit ``unit_name`` of ``cache_folder``'s data file."""
    return parts_folder(cache_folder) / f"{unit_name}.part"


def remove_parts(cache_folder: Path) -> None:
    """Remove the parts folder of ``cache_folder`` (once the cache is built nothing reads it)."""
    shutil.rmtree(parts_folder(cache_folder), ignore_errors=True)


class PartWriter:
    """Writes one unit's part file: ``write`` each batch of documents, then ``finish`` with the unit's counts.

    Used as a context manager; leaving it without ``finish`` (an error) removes the unfinished file.
    """

    def __init__(self, path: Path):
        self.path = path
        self.temporary = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
        self.lengths: list[np.ndarray] = []
        self.num_tokens = 0

    def __enter__(self) -> "PartWriter":
        self.file = open(self.temporary, "wb")
        return self

    def write(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents: ``tokens`` (num_tokens,) end to end, ``lengths`` (num_documents,) int64."""
        tokens.tofile(self.file)
        self.lengths.append(lengths)
        self.num_tokens += len(tokens)

    def finish(self, counts: ReadCounts) -> None:
        """Append the lengths and ``counts``, and rename the part into place."""
        np.concatenate([np.zeros(0, np.int64), *self.lengths]).astype("<i8").tofile(self.file)
        trailer = json.dumps({"tokens": self.num_tokens, "texts": counts.texts, "blank": counts.blank,
                              "bad_lines": counts.bad_lines}).encode()
        self.file.write(trailer + _TRAILER.pack(len(trailer)))
        self.file.close()
        publish_once(self.temporary, self.path)

    def __exit__(self, *exc_info) -> None:
        self.file.close()
        if self.temporary.exists():
            self.temporary.unlink()


def publish_once(temporary: Path, path: Path) -> None:
    """Give ``temporary`` the name ``path`` unless a part is there already (written by a process that took the
    same unit, e.g. where a network file system's cached lookups hid it): a part another process may be
    assembling is never replaced. Where the file system has no hard links, the part is renamed into place."""
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    except OSError:  # no hard links here (some FUSE and object-store mounts)
        os.replace(temporary, path)
        return
    temporary.unlink()


def assemble_parts(paths: Sequence[Path], out: BinaryIO, dtype: np.dtype,
                   on_part: Callable[[int], None]) -> tuple[np.ndarray, ReadCounts]:
    """Append the tokens of the part files ``paths``, in order, to ``out``; ``on_part(k)`` after the k-th.

    Returns the offsets of all their documents, (num_documents + 1,) int64 from 0, and their summed counts.
    """
    offsets, counts, num_tokens = [np.zeros(1, np.int64)], ReadCounts(), 0
    for index, path in enumerate(paths, start=1):
        with open(path, "rb") as part:
            part.seek(-_TRAILER.size, os.SEEK_END)
            (trailer_bytes,) = _TRAILER.unpack(part.read(_TRAILER.size))
            lengths_end = part.seek(-_TRAILER.size - trailer_bytes, os.SEEK_END)
            trailer = json.loads(part.read(trailer_bytes))
            tokens_bytes = trailer["tokens"] * dtype.itemsize
            part.seek(tokens_bytes)
            lengths = np.frombuffer(part.read(lengths_end - tokens_bytes), "<i8")
            part.seek(0)
            _copy(part, out, tokens_bytes)
        offsets.append(num_tokens + np.cumsum(lengths))
        num_tokens += trailer["tokens"]
        counts.texts += trailer["texts"]
        counts.blank += trailer["blank"]
        counts.bad_lines += trailer["bad_lines"]
        on_part(index)
    return np.concatenate(offsets), counts


def _copy(source: BinaryIO, target: BinaryIO, count: int) -> None:
    """Copy ``count`` bytes from ``source``'s position to ``target``, a bounded chunk at a time."""
    while count > 0:
        chunk = source.read(min(count, _COPY_BYTES))
        if not chunk:
            raise EOFError(f"{source.name}: shorter than its trailer says")
        target.write(chunk)
        count -= len(chunk)
