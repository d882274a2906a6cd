"""Holding a share of a corpus's documents out of training, for validation.

The held-out documents are chosen from the document count and the fraction alone (a fixed
generator, not the run's seed), so every rank, every world size and every run on the same
file with the same fraction holds out the same documents, and validation losses of runs with
different seeds compare on the same text.
"""

from dataclasses import dataclass

import numpy as np

from minimind.data.token_spans import TokenSpans

HELD_OUT_SEED = 20260101  # fixed: the held-out set belongs to the corpus, not to the run


@dataclass(frozen=True)
class DocumentSplit:
    """Sorted document indices of the training and held-out shares."""

    train: np.ndarray  # (num_train_documents,) int64
    held_out: np.ndarray  # (num_held_out_documents,) int64


def split_documents(num_documents: int, fraction: float) -> DocumentSplit:
    """Hold out ``round(fraction * num_documents)`` documents (at least one), chosen uniformly at random
    by a fixed generator; raises ``ValueError`` when that leaves no document to train on."""
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must lie between 0 and 1, got {fraction}")
    held_count = max(1, round(fraction * num_documents))
    if held_count >= num_documents:
        raise ValueError(f"holding out {fraction:g} of {num_documents} documents leaves none to train on")
    held_out = np.sort(np.random.default_rng(HELD_OUT_SEED).choice(num_documents, held_count, replace=False))
    keep = np.ones(num_documents, dtype=bool)
    keep[held_out] = False
    return DocumentSplit(train=np.flatnonzero(keep), held_out=held_out.astype(np.int64))


def document_stream(tokens, offsets: np.ndarray, documents: np.ndarray) -> TokenSpans:
    """The tokens of ``documents`` (sorted indices) of a corpus, concatenated in order, read like a 1-D array
    and copied nowhere: consecutive documents merge into one span of ``tokens`` (an array or ``TokenSpans``,
    with ``offsets`` (num_documents + 1,) the document starts)."""
    starts, ends = offsets[documents], offsets[documents + 1]
    # a span begins at every kept document whose predecessor is not its neighbour
    span_begins = np.flatnonzero(np.r_[True, starts[1:] != ends[:-1]])
    span_ends = np.r_[span_begins[1:], len(documents)] - 1
    return TokenSpans([tokens] * len(span_begins), starts[span_begins], ends[span_ends])
