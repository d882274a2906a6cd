"""Tokenize a data file (JSON Lines, compressed or not, or Parquet) once, on all CPU cores, into a
memory-mapped cache on disk.

A cache lives in ``<cache_dir>/<file stem>-<key>/``, where the key hashes the source file's
identity (absolute path, size, mtime_ns, blake2b of its content), the tokenizer fingerprint and
the settings, so a changed file, tokenizer or setting gets a new cache and an unchanged one is
reused. It holds:

    tokens.bin   uint16 little-endian (uint32 for a vocabulary past 65,536), (num_tokens,): every
                 document as [bos] + text tokens + [eos]
    offsets.npy  int64, (num_documents + 1,): document d is tokens[offsets[d]:offsets[d + 1]]
    meta.json    the key's inputs and the counts, written last

It is built in a temporary folder renamed into place at the end, so a crashed or failed build
(bad input raises DataError during the pass) is never taken for a finished cache. Every rank
may call it at once, before any process group exists: one process builds under a file lock
(``minimind.data.build_lock``) while the others wait on the lock, then load what it built.

A build is cut into work units (``work_units``: byte ranges of a plain JSON Lines file, runs of
Parquet row groups, a compressed file whole) that this process, its forked workers
(``tokenize_pool``, with ``workers`` above 1) and every other process building the same caches
claim by file locks (``unit_claims``), writing one part each (``token_parts``); one process then
assembles the parts, in order, into exactly the layout above. A worker is a core: one worker
tokenizes in this process with one tokenizer thread; a build of one unit, with more workers,
runs in this process on the tokenizers library's threads.
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerFast

from minimind.data.build_lock import BuildProgress, build_once
from minimind.data.cache_root import cache_root
from minimind.data.document_encoding import TokenizeSettings
from minimind.data.jsonl_reader import DataError, ReadCounts
from minimind.data.text_sources import validate_texts
from minimind.data.token_parts import assemble_parts, part_path, remove_parts
from minimind.data.tokenize_pool import tokenize_units
from minimind.data.unit_claims import UnitTask
from minimind.data.work_units import WorkUnit, plan_units
from minimind.tokenizer import TokenizerLayoutError, tokenizer_fingerprint

CACHE_FORMAT = 1  # bump when the layout or the tokenization rules change
TOKEN_DTYPES = (np.dtype("<u2"), np.dtype("<u4"))  # the narrowest that holds every id of the vocabulary
BATCH_TEXTS = 1000
_HASH_CHUNK_BYTES = 8 * 2**20


@dataclass(frozen=True)
class TokenCache:
    """A loaded token cache; ``reused`` is False when this call built it."""

    path: Path
    tokens: np.ndarray  # (num_tokens,) uint16 (uint32 for a vocabulary past 65,536), memory-mapped read-only
    offsets: np.ndarray  # (num_documents + 1,) int64
    blank_texts: int
    bad_lines: int
    reused: bool

    @property
    def num_documents(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    def describe(self) -> str:
        """One line: where the cache is, whether it was reused, and its counts."""
        action = "reused" if self.reused else "built"
        return (f"token cache {action}: {self.path} ({self.num_documents} documents, {self.num_tokens} tokens; "
                f"skipped {self.blank_texts} blank texts, {self.bad_lines} bad lines)")


@dataclass(frozen=True)
class TokenCacheLocation:
    """Where the token cache of one file's content, tokenizer and settings lives, and what its key hashes."""

    folder: Path
    key_inputs: dict

    @property
    def built(self) -> bool:
        """Whether a finished cache is there (one whose build checked every line of the file)."""
        return (self.folder / "meta.json").is_file()


def build_or_load_token_cache(data_path: str | Path, tokenizer: PreTrainedTokenizerFast, *,
                              cache_dir: str | Path | None = None, skip_bad_lines: bool = False,
                              text_field: str = "text", batch_texts: int = BATCH_TEXTS, workers: int = 1,
                              part_bytes: int | None = None, show_progress: bool = True,
                              log: Callable[[str], None] = print,
                              location: TokenCacheLocation | None = None) -> TokenCache:
    """Return the token cache of ``data_path`` under ``tokenizer``, building it if there is none.

    ``cache_dir`` holds one folder per cache (default ``cache_root() / "tokens"``). Bad input
    raises DataError (or is skipped and counted with ``skip_bad_lines``); ``log`` receives a
    line saying whether the cache was built or reused, and its counts. ``location``, from
    ``token_cache_location`` with the same arguments, saves hashing the file again. ``workers``
    and ``part_bytes``: as ``build_or_load_token_caches``.
    """
    return build_or_load_token_caches([data_path], tokenizer, cache_dir=cache_dir, skip_bad_lines=skip_bad_lines,
                                      text_field=text_field, batch_texts=batch_texts, workers=workers,
                                      part_bytes=part_bytes, show_progress=show_progress, log=log,
                                      locations=[location])[0]


def build_or_load_token_caches(data_paths: Sequence[str | Path], tokenizer: PreTrainedTokenizerFast, *,
                               cache_dir: str | Path | None = None, skip_bad_lines: bool = False,
                               text_field: str = "text", batch_texts: int = BATCH_TEXTS, workers: int = 1,
                               part_bytes: int | None = None, first: int = 0, show_progress: bool = True,
                               log: Callable[[str], None] = print,
                               locations: Sequence[TokenCacheLocation | None] | None = None) -> list[TokenCache]:
    """The token caches of ``data_paths``, in their order, building those that do not exist, starting with
    the file at index ``first`` (each rank of a node its own, so that the ranks start on different files).

    The work units of the files to build (``work_units.plan_units``, about ``part_bytes`` each, by default a
    size that depends on the file's alone) are tokenized by this process and ``workers - 1`` forked ones
    (``tokenize_pool.tokenize_units``) with any other process building them; then this process assembles or
    loads each cache. Other arguments: as ``build_or_load_token_cache``, ``locations`` one per file (or None,
    found here).
    """
    paths = [Path(path).resolve() for path in data_paths]
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise TokenizerLayoutError(tokenizer.name_or_path, "tokenizer needs bos and eos tokens")
    locations = [location or token_cache_location(path, tokenizer, cache_dir=cache_dir, skip_bad_lines=skip_bad_lines,
                                                  text_field=text_field)
                 for path, location in zip(paths, locations or [None] * len(paths), strict=True)]
    settings = [_tokenize_settings(location, tokenizer, batch_texts) for location in locations]
    order = [*range(first, len(paths)), *range(first)]
    units = {index: plan_units(paths[index], part_bytes) for index in order if not locations[index].built}
    tasks = [UnitTask(unit, locations[index].folder, settings[index]) for index in units for unit in units[index]]
    tokenize_units(tasks, tokenizer.backend_tokenizer, workers, show_progress=show_progress, log=log)
    caches = {index: _build_or_load(paths[index], locations[index], units.get(index, ()), settings[index], log=log)
              for index in order}
    return [caches[index] for index in range(len(paths))]


def token_cache_location(data_path: str | Path, tokenizer: PreTrainedTokenizerFast, *,
                         cache_dir: str | Path | None = None, skip_bad_lines: bool = False,
                         text_field: str = "text") -> TokenCacheLocation:
    """The location of the token cache of ``data_path`` under ``tokenizer``, built or not (hashes the file)."""
    data_path = Path(data_path).resolve()
    settings = {"bos_id": tokenizer.bos_token_id, "eos_id": tokenizer.eos_token_id, "skip_bad_lines": skip_bad_lines}
    if text_field != "text":  # recorded only when set, so that caches of the default stay where they are
        settings["text_field"] = text_field
    key_inputs = {
        "format": CACHE_FORMAT,
        "source": source_identity(data_path),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "settings": settings,
    }
    key = hashlib.blake2b(json.dumps(key_inputs, sort_keys=True).encode(), digest_size=8).hexdigest()
    parent = Path(cache_dir) if cache_dir is not None else cache_root() / "tokens"
    return TokenCacheLocation(parent / f"{data_path.stem}-{key}", key_inputs)


def source_identity(path: Path) -> dict:
    """Return what identifies a file's content: absolute path, size, mtime_ns and a blake2b digest.

    The digest streams the file, so a same-size edit with a restored mtime is still noticed.
    """
    try:
        stat = path.stat()
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK_BYTES):
                digest.update(chunk)
    except OSError as error:
        raise DataError(path, None, f"cannot read ({error.strerror or error})") from None
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "blake2b": digest.hexdigest()}


def _tokenize_settings(location: TokenCacheLocation, tokenizer: PreTrainedTokenizerFast,
                       batch_texts: int) -> TokenizeSettings:
    """How the file of ``location`` is read and encoded: as its key's settings say."""
    settings = location.key_inputs["settings"]
    return TokenizeSettings(settings["bos_id"], settings["eos_id"], token_dtype(len(tokenizer)),
                            settings["skip_bad_lines"], settings.get("text_field", "text"), batch_texts)


def _build_or_load(data_path: Path, location: TokenCacheLocation, units: Sequence[WorkUnit],
                   settings: TokenizeSettings, *, log: Callable[[str], None]) -> TokenCache:
    """``location``'s cache, assembled under its build lock from the parts of ``units`` (all written) unless
    it exists, then the parts removed."""
    built_here = build_once(location.folder, lambda: location.built, _assembler(data_path, location, units, settings),
                            log=log)
    remove_parts(location.folder)
    cache = _load(location.folder, reused=not built_here)
    log(cache.describe())
    return cache


def _assembler(data_path: Path, location: TokenCacheLocation, units: Sequence[WorkUnit],
               settings: TokenizeSettings) -> Callable[[BuildProgress], None]:
    """The build of ``location``'s cache from the part files of ``units``, all written, in order. A file whose
    units hold no texts at all is read whole once more, so that the error is its reader's own."""

    def build(lock_progress: BuildProgress) -> None:
        parts = [part_path(location.folder, unit.name) for unit in units]
        with _staged(location.folder) as staging:
            with open(staging / "tokens.bin", "wb") as out:
                offsets, counts = assemble_parts(
                    parts, out, settings.dtype,
                    lambda done: lock_progress.report(f"assembled {done} of {len(parts)} parts"))
            if counts.texts == 0:
                validate_texts(data_path, skip_bad_lines=settings.skip_bad_lines, text_field=settings.text_field)
            _write_index(staging, location.key_inputs, offsets, counts, settings.dtype)

    return build


@contextlib.contextmanager
def _staged(folder: Path) -> Iterator[Path]:
    """A temporary folder beside ``folder``, renamed to it when the block completes, removed if it fails."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        yield staging
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder / "meta.json").is_file():  # not another rank or node that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_index(staging: Path, key_inputs: dict, offsets: np.ndarray, counts: ReadCounts, dtype: np.dtype) -> None:
    """Write ``offsets.npy`` and, last, ``meta.json`` (the key's inputs and the counts) beside ``tokens.bin``."""
    np.save(staging / "offsets.npy", offsets)
    meta = {**key_inputs, "documents": counts.texts, "tokens": int(offsets[-1]), "dtype": dtype.str,
            "blank_texts": counts.blank, "bad_lines": counts.bad_lines}
    (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def _load(folder: Path, *, reused: bool) -> TokenCache:
    """Open a finished cache folder; raise DataError if its files disagree with meta.json."""
    meta = json.loads((folder / "meta.json").read_text())
    tokens_path = folder / "tokens.bin"
    offsets = np.load(folder / "offsets.npy")
    dtype = np.dtype(meta.get("dtype", TOKEN_DTYPES[0].str))  # caches from before uint32 are uint16
    expected_bytes = meta["tokens"] * dtype.itemsize
    if (not tokens_path.is_file() or tokens_path.stat().st_size != expected_bytes
            or len(offsets) != meta["documents"] + 1 or int(offsets[-1]) != meta["tokens"]):
        raise DataError(folder, None, "token cache is inconsistent with its meta.json; delete the folder")
    tokens = np.memmap(tokens_path, dtype=dtype, mode="r", shape=(meta["tokens"],))
    return TokenCache(path=folder, tokens=tokens, offsets=offsets, blank_texts=meta["blank_texts"],
                      bad_lines=meta["bad_lines"], reused=reused)


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest of ``TOKEN_DTYPES`` that holds ids ``0 .. vocab_size - 1``."""
    for dtype in TOKEN_DTYPES:
        if vocab_size <= np.iinfo(dtype).max + 1:
            return dtype
    raise ValueError(f"a vocabulary of {vocab_size} tokens does not fit in {TOKEN_DTYPES[-1]}")
