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
"""

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast

from minimind.data.build_lock import BuildProgress, build_once
from minimind.data.cache_root import cache_root
from minimind.data.jsonl_reader import DataError
from minimind.data.text_sources import text_reader
from minimind.tokenizer import TokenizerLayoutError, tokenizer_fingerprint

CACHE_FORMAT = 1  # bump when the layout or the tokenization rules change
TOKEN_DTYPES = (np.dtype("<u2"), np.dtype("<u4"))  # the narrowest that holds every id of the vocabulary
BATCH_TEXTS = 1000
_HASH_CHUNK_BYTES = 8 * 2**20
_FALSE_VALUES = frozenset({"", "0", "f", "false", "n", "no", "off"})


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
                              text_field: str = "text", batch_texts: int = BATCH_TEXTS, show_progress: bool = True,
                              log: Callable[[str], None] = print,
                              location: TokenCacheLocation | None = None) -> TokenCache:
    """Return the token cache of ``data_path`` under ``tokenizer``, building it if there is none.

    ``cache_dir`` holds one folder per cache (default ``cache_root() / "tokens"``). Bad input
    raises DataError (or is skipped and counted with ``skip_bad_lines``); ``log`` receives a
    line saying whether the cache was built or reused, and its counts. ``location``, from
    ``token_cache_location`` with the same arguments, saves hashing the file again.
    """
    data_path = Path(data_path).resolve()
    bos_id, eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos_id is None or eos_id is None:
        raise TokenizerLayoutError(tokenizer.name_or_path, "tokenizer needs bos and eos tokens")
    if location is None:
        location = token_cache_location(data_path, tokenizer, cache_dir=cache_dir, skip_bad_lines=skip_bad_lines,
                                        text_field=text_field)
    built_here = build_once(
        location.folder, lambda: location.built,
        lambda progress: _build(location.folder, data_path, tokenizer, location.key_inputs, batch_texts=batch_texts,
                                show_progress=show_progress, log=log, lock_progress=progress),
        log=log,
    )
    cache = _load(location.folder, reused=not built_here)
    log(cache.describe())
    return cache


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


def _build(folder: Path, data_path: Path, tokenizer: PreTrainedTokenizerFast, key_inputs: dict, *,
           batch_texts: int, show_progress: bool, log: Callable[[str], None], lock_progress: BuildProgress) -> None:
    """Tokenize ``data_path`` into a temporary folder, then rename it to ``folder``; the bytes done
    go to ``lock_progress`` for the processes waiting on the build."""
    log(f"token cache: tokenizing {data_path} into {folder}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        settings = key_inputs["settings"]
        reader = text_reader(data_path, skip_bad_lines=settings["skip_bad_lines"],
                             text_field=settings.get("text_field", "text"))
        bos_id, eos_id = settings["bos_id"], settings["eos_id"]
        dtype = token_dtype(len(tokenizer))
        offsets = [np.zeros(1, np.int64)]
        num_tokens = 0
        progress = tqdm(total=key_inputs["source"]["size"], unit="B", unit_scale=True, desc="tokenizing",
                        disable=not show_progress)
        with open(staging / "tokens.bin", "wb") as out, progress, _parallel_tokenization(log):
            for texts in _batches(reader, batch_texts):
                encodings = tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
                text_ids = [encoding.ids for encoding in encodings]
                lengths = np.array([len(ids) + 2 for ids in text_ids], np.int64)
                documents = itertools.chain.from_iterable((bos_id, *ids, eos_id) for ids in text_ids)
                np.fromiter(documents, dtype, int(lengths.sum())).tofile(out)
                offsets.append(num_tokens + np.cumsum(lengths))
                num_tokens += int(lengths.sum())
                progress.update(reader.counts.bytes_read - progress.n)
                lock_progress.report(f"tokenized {progress.n / 2**20:.1f} of {progress.total / 2**20:.1f} MiB")
        np.save(staging / "offsets.npy", np.concatenate(offsets))
        meta = {**key_inputs, "documents": reader.counts.texts, "tokens": num_tokens, "dtype": dtype.str,
                "blank_texts": reader.counts.blank, "bad_lines": reader.counts.bad_lines}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder / "meta.json").is_file():  # not another rank or node that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(texts)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


@contextlib.contextmanager
def _parallel_tokenization(log: Callable[[str], None]) -> Iterator[None]:
    """Let the tokenizers library use all cores here even if TOKENIZERS_PARALLELISM disables it.

    Many training scripts set it to false to silence a fork warning; that would make this pass
    single-threaded. The previous value is restored afterwards.
    """
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    if previous is None or previous.strip().lower() not in _FALSE_VALUES:
        yield
        return
    log(f"token cache: TOKENIZERS_PARALLELISM={previous!r} lifted while tokenizing, to use all cores")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        os.environ["TOKENIZERS_PARALLELISM"] = previous
