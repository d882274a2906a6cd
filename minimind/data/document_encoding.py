"""Texts into document tokens, ``[bos] + text tokens + [eos]`` each, and the tokenizers library's thread setting."""

import contextlib
import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

PARALLELISM_VARIABLE = "TOKENIZERS_PARALLELISM"  # read by the tokenizers library at each batch
_FALSE_VALUES = frozenset({"", "0", "f", "false", "n", "no", "off"})


@dataclass(frozen=True)
class TokenizeSettings:
    """How a data file's texts become a token cache's documents: how it is read and how texts are encoded."""

    bos_id: int
    eos_id: int
    dtype: np.dtype  # the cache's token dtype (``token_cache.token_dtype``)
    skip_bad_lines: bool
    text_field: str
    batch_texts: int  # texts encoded per call of the tokenizer


def encoded_documents(texts: Iterable[str], tokenizer: Tokenizer,
                      settings: TokenizeSettings) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each batch of ``settings.batch_texts`` texts as ``(tokens, lengths)``: its documents end to end,
    (num_tokens,) ``settings.dtype``, and their lengths, (num_documents,) int64."""
    iterator = iter(texts)
    while batch := list(itertools.islice(iterator, settings.batch_texts)):
        text_ids = [encoding.ids for encoding in tokenizer.encode_batch_fast(batch, add_special_tokens=False)]
        lengths = np.array([len(ids) + 2 for ids in text_ids], np.int64)
        documents = itertools.chain.from_iterable((settings.bos_id, *ids, settings.eos_id) for ids in text_ids)
        yield np.fromiter(documents, settings.dtype, int(lengths.sum())), lengths


@contextlib.contextmanager
def parallel_tokenization(log: Callable[[str], None]) -> Iterator[None]:
    """Let the tokenizers library use all cores here even if TOKENIZERS_PARALLELISM disables it.

    Many training scripts set it to false to silence a fork warning; that would make this pass
    single-threaded. The previous value is restored afterwards.
    """
    previous = os.environ.get(PARALLELISM_VARIABLE)
    if previous is None or previous.strip().lower() not in _FALSE_VALUES:
        yield
        return
    log(f"token cache: {PARALLELISM_VARIABLE}={previous!r} lifted while tokenizing, to use all cores")
    with _parallelism_set_to("true"):
        yield


@contextlib.contextmanager
def single_thread_tokenization() -> Iterator[None]:
    """TOKENIZERS_PARALLELISM=false: one tokenizer thread here (one worker), and in processes forked meanwhile,
    whose fork handler, finding the setting made, prints no warning about threads used before the fork."""
    with _parallelism_set_to("false"):
        yield


@contextlib.contextmanager
def _parallelism_set_to(value: str) -> Iterator[None]:
    previous = os.environ.get(PARALLELISM_VARIABLE)
    os.environ[PARALLELISM_VARIABLE] = value
    try:
        yield
    finally:
        if previous is None:
            del os.environ[PARALLELISM_VARIABLE]
        else:
            os.environ[PARALLELISM_VARIABLE] = previous
