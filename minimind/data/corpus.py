"""The data files a run names, and their token caches read as one corpus.

``--data_path`` takes files, globs and folders; ``data_files`` turns them into the sorted list of
files they name, each a one-line ``DataError`` when it names nothing. An entry may end in
``:weight`` (``web/*.jsonl:0.7 code.parquet:0.3``); ``data_sources`` groups the files into the
weighted sources of a mixture, or one unweighted source. Each file keeps its own token cache
(adding a file tokenizes only that file); ``Corpus.of`` lays the caches end to end, so samples,
sampler and held-out split see one stream of documents, without copying a token.
"""

import glob
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minimind.data.jsonl_reader import DataError
from minimind.data.text_sources import DATA_SUFFIXES
from minimind.data.token_cache import TokenCache
from minimind.data.token_spans import TokenSpans

GLOB_CHARACTERS = frozenset("*?[")


def data_files(entries: list[str]) -> list[Path]:
    """The files ``entries`` name, in order, each once: a file as given, a glob's matches (sorted), a
    folder's data files (names ending in ``DATA_SUFFIXES``, sorted). A glob that matches nothing, a
    folder without data files or a path that does not exist is a one-line ``DataError``."""
    files: dict[Path, None] = {}
    for entry in entries:
        if GLOB_CHARACTERS & set(entry):
            matches = sorted(Path(match) for match in glob.glob(entry, recursive=True) if Path(match).is_file())
            if not matches:
                raise DataError(entry, None, "the pattern matches no file")
        elif Path(entry).is_dir():
            matches = sorted(path for path in Path(entry).iterdir()
                             if path.is_file() and path.name.endswith(DATA_SUFFIXES))
            if not matches:
                raise DataError(entry, None, f"no data file in the folder (names ending {', '.join(DATA_SUFFIXES)})")
        elif Path(entry).is_file():
            matches = [Path(entry)]
        else:
            raise DataError(entry, None, "no such file or folder")
        files.update(dict.fromkeys(path.resolve() for path in matches))
    return list(files)


@dataclass(frozen=True)
class DataSource:
    """The files of one ``--data_path`` entry (or of all entries, unweighted) and its mixture weight."""

    name: str  # the entry as written, without its weight
    files: tuple[Path, ...]
    weight: float | None  # None: not a mixture


def data_sources(entries: list[str]) -> list[DataSource]:
    """The sources ``entries`` name: one per entry where every entry ends in ``:weight`` (a mixture), else one
    source of all their files (concatenated). A weight that is not a positive number, weights on some entries
    only, or a file in two weighted sources is a one-line ``DataError`` naming ``--data_path``."""
    split = [_split_weight(entry) for entry in entries]
    weighted = [weight is not None for _, weight in split]
    if not any(weighted):
        return [DataSource(" ".join(entries), tuple(data_files(entries)), None)]
    if not all(weighted):
        unweighted = [entry for entry, weight in split if weight is None]
        raise DataError("--data_path", None, f"{unweighted[0]} has no weight while other entries have one; "
                                             "give every entry a weight (path:0.3) or none")
    sources = [DataSource(entry, tuple(data_files([entry])), weight) for entry, weight in split]
    owners: dict[Path, str] = {}
    for source in sources:
        for path in source.files:
            if owners.setdefault(path, source.name) != source.name:
                raise DataError("--data_path", None, f"{path} is in two weighted entries ({owners[path]} and "
                                                     f"{source.name}); a file belongs to one source of a mixture")
    return sources


def source_files(sources: list[DataSource]) -> tuple[Path, ...]:
    """Every file of ``sources``, in order, each once."""
    return tuple(dict.fromkeys(path for source in sources for path in source.files))


def _split_weight(entry: str) -> tuple[str, float | None]:
    """``path:weight`` as (path, weight). An entry that names an existing path, has no ``:``, or whose ``:`` is
    followed by text that is not a number while the part before it names nothing, has no weight (its path
    is checked as a path)."""
    path, colon, weight_text = entry.rpartition(":")
    if not colon or Path(entry).exists() or "/" in weight_text:
        return entry, None
    try:
        weight = float(weight_text)
    except ValueError:
        if not _names_something(path):  # "data:v2.jsonl", "logs/T10:00*.jsonl": a colon in the path
            return entry, None
        weight = math.nan
    if not (math.isfinite(weight) and weight > 0):
        raise DataError("--data_path", None, f"{entry}: the weight {weight_text!r} is not a positive number")
    return path, weight


def _names_something(entry: str) -> bool:
    """Whether ``entry`` is an existing file or folder, or a glob that matches something."""
    return Path(entry).exists() or bool(GLOB_CHARACTERS & set(entry) and glob.glob(entry, recursive=True))


@dataclass(frozen=True)
class Corpus:
    """The documents of one or more token caches, in order: ``tokens`` sliced like an array and ``offsets``
    (num_documents + 1,) int64, document d being ``tokens[offsets[d]:offsets[d + 1]]``."""

    tokens: np.ndarray | TokenSpans
    offsets: np.ndarray

    @classmethod
    def of(cls, caches: list[TokenCache]) -> "Corpus":
        """The caches end to end (one cache: its own arrays, untouched)."""
        if len(caches) == 1:
            return cls(caches[0].tokens, caches[0].offsets)
        tokens = TokenSpans([cache.tokens for cache in caches], [0] * len(caches),
                            [cache.num_tokens for cache in caches])
        offsets = [cache.offsets[:-1] + base for cache, base in zip(caches, tokens.stream_starts[:-1], strict=True)]
        return cls(tokens, np.concatenate([*offsets, tokens.stream_starts[-1:]]).astype(np.int64))

    @property
    def num_documents(self) -> int:
        """How many documents the corpus holds."""
        return len(self.offsets) - 1
