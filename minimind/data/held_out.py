"""Holding a share of a corpus's documents out of training, for validation.

The held-out documents are chosen from the document count and the fraction alone (a fixed
generator, not the run's seed), so every rank, every world size and every run on the same
file with the same fraction holds out the same documents, and validation losses of runs with
different seeds compare on the same text.
"""

from dataclasses import dataclass

import numpy as np

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


class DocumentStream:
    """The tokens of some documents of a token cache, concatenated in order, read like a 1-D array.

    ``len(stream)`` and ``stream[a:b]`` (a NumPy array) are all ``PackedWindows`` needs. Nothing is
    copied: consecutive documents merge into runs of the cache's array, and a slice gathers the
    pieces of the runs it crosses (a binary search over the run starts).
    """

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, documents: np.ndarray):
        """``tokens`` (num_tokens,), ``offsets`` (num_documents + 1,) document starts, ``documents``
        sorted indices of the documents to keep."""
        starts, ends = offsets[documents], offsets[documents + 1]
        # a run begins at every kept document whose predecessor is not its neighbour
        run_begins = np.flatnonzero(np.r_[True, starts[1:] != ends[:-1]])
        run_ends = np.r_[run_begins[1:], len(documents)] - 1
        self.tokens = tokens
        self.run_starts = starts[run_begins].astype(np.int64)  # (runs,) positions in ``tokens``
        run_lengths = (ends[run_ends] - starts[run_begins]).astype(np.int64)
        self.stream_starts = np.r_[0, np.cumsum(run_lengths)]  # (runs + 1,) positions in the stream
        self.dtype = tokens.dtype

    def __len__(self) -> int:
        return int(self.stream_starts[-1])

    def __getitem__(self, window: slice) -> np.ndarray:
        if not isinstance(window, slice) or window.step not in (None, 1):
            raise TypeError("a DocumentStream is read by contiguous slices")
        start, stop, _ = window.indices(len(self))
        if stop <= start:
            return np.empty(0, dtype=self.dtype)
        first = int(np.searchsorted(self.stream_starts, start, side="right")) - 1
        pieces = []
        run = first
        while start < stop:
            offset = start - self.stream_starts[run]
            take = min(stop, self.stream_starts[run + 1]) - start
            begin = self.run_starts[run] + offset
            pieces.append(self.tokens[begin:begin + take])
            start += take
            run += 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
