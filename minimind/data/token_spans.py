"""Spans of token arrays laid end to end and read like one 1-D array, without copying them."""

from collections.abc import Sequence

import numpy as np


class TokenSpans:
    """``sources[i][starts[i]:stops[i]]`` for every span i, end to end, read like a 1-D array.

    ``len()`` and contiguous slices (NumPy arrays in the sources' widest dtype) are all
    ``PackedWindows``, ``PaddedDocuments`` and the held-out split use. A slice gathers the pieces
    of the spans it crosses (a binary search over the span starts); a source may be any array,
    memory-mapped or not, or another ``TokenSpans``.
    """

    def __init__(self, sources: Sequence, starts: Sequence[int], stops: Sequence[int]):
        self.sources = sources
        self.starts = np.asarray(starts, dtype=np.int64)  # (spans,) positions in each source
        lengths = np.asarray(stops, dtype=np.int64) - self.starts
        self.stream_starts = np.r_[0, np.cumsum(lengths)]  # (spans + 1,) positions in the stream
        self.dtype = np.result_type(*{source.dtype for source in sources}) if len(sources) else np.dtype(np.uint16)

    def __len__(self) -> int:
        return int(self.stream_starts[-1])

    def __getitem__(self, window: slice) -> np.ndarray:
        if not isinstance(window, slice) or window.step not in (None, 1):
            raise TypeError("token spans are read by contiguous slices")
        start, stop, _ = window.indices(len(self))
        pieces = []
        span = int(np.searchsorted(self.stream_starts, start, side="right")) - 1
        while start < stop:
            take = min(stop, int(self.stream_starts[span + 1])) - start
            begin = int(self.starts[span]) + start - int(self.stream_starts[span])
            pieces.append(self.sources[span][begin:begin + take])
            start += take
            span += 1
        if not pieces:
            return np.empty(0, dtype=self.dtype)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces).astype(self.dtype, copy=False)
