"""Training samples cut from a token cache: packed windows (the default) or one padded document per row.

Every sample is ``{"input_ids": LongTensor(L), "targets": LongTensor(L)}`` with L = max_seq_len.
Targets are already shifted (``targets[t]`` is the token to predict at ``input_ids[t]``'s
position; not Hugging Face's ``labels``, which the model shifts itself) and ``IGNORE_INDEX``
marks positions left out of the loss. Both datasets read straight from the
cache arrays (``TokenCache.tokens`` / ``.offsets``), so nothing is copied at construction.
"""

import numpy as np
import torch
from torch.utils.data import Dataset

from minimind.model.loss import IGNORE_INDEX
from minimind.tokenizer import PAD_ID


class PackedWindows(Dataset):
    """The whole token stream cut into consecutive, non-overlapping windows of max_seq_len + 1 tokens.

    Window i is ``tokens[i * (L + 1) : (i + 1) * (L + 1)]``; ``input_ids = w[:-1]`` and
    ``targets = w[1:]``. Documents keep their ``[bos] ... [eos]`` framing and follow each other
    inside a window (attention is not cut at document boundaries, as in GPT-style pretraining).
    The last, partial window is padded with ``pad_id`` and its padding masked out of the targets,
    so every token of the corpus lies in exactly one window and no compute goes to padding
    elsewhere.
    """

    def __init__(self, tokens: np.ndarray, max_seq_len: int, *, pad_id: int = PAD_ID):
        """``tokens``: (num_tokens,) integer array, e.g. ``TokenCache.tokens``, or anything sliced like
        one (``TokenSpans``: some documents, or several files' caches)."""
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be positive, got {max_seq_len}")
        self.tokens = tokens
        self.max_seq_len = max_seq_len
        self.pad_id = pad_id
        self._window = max_seq_len + 1
        self._len = -(-len(tokens) // self._window)
        # A window holding n real tokens gives n - 1 targets.
        self.num_label_tokens = len(tokens) - self._len

    def __len__(self) -> int:
        return self._len

    def blank(self) -> dict[str, torch.Tensor]:
        """A window of padding with no target (what an evaluation fills its last batch with)."""
        return shifted_sample(np.empty(0, dtype=np.int64), self.max_seq_len, self.pad_id)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self._len:
            raise IndexError(f"window {index} out of range for {self._len} windows")
        start = index * self._window
        return shifted_sample(self.tokens[start:start + self._window], self.max_seq_len, self.pad_id)


# ``PaddedDocuments``' row layouts, named by the model family whose MiniMind trainer writes them.
PADDED_ROWS = ("minimind2", "minimind3")


class PaddedDocuments(Dataset):
    """One document per row (``--packing 0``), exactly as the ``PretrainDataset`` of the model family's
    MiniMind writes it with ``max_length = max_seq_len + 1``; the model reads ``max_seq_len`` tokens of each.

    ``rows="minimind3"`` (today's MiniMind): ``[bos]``, the document's first max_seq_len - 1 text tokens and
    ``[eos]``, padded with ``pad_id``. ``rows="minimind2"`` (e119db8, whose tokenizer call adds no special
    tokens): the first max_seq_len + 1 text tokens, padded. Then ``input_ids = row[:-1]`` and ``targets =
    row[1:]`` with every ``pad_id`` masked, as both versions mask (a pad token inside a text too). Short
    documents waste most of each row on padding; ``PackedWindows`` avoids that.
    """

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, max_seq_len: int, *, pad_id: int = PAD_ID,
                 documents: np.ndarray | None = None, rows: str = "minimind3"):
        """``tokens``: (num_tokens,) integers, each document ``[bos] text [eos]``; ``offsets``: (num_documents + 1,)
        document starts; ``documents``: the indices of the documents to serve, in order (default: all)."""
        if max_seq_len < 2:
            raise ValueError(f"max_seq_len must be at least 2 (bos and eos), got {max_seq_len}")
        if rows not in PADDED_ROWS:
            raise ValueError(f"rows must be one of {', '.join(PADDED_ROWS)}, got {rows!r}")
        self.tokens = tokens
        self.offsets = offsets
        self.documents = np.arange(len(offsets) - 1) if documents is None else documents
        self.max_seq_len = max_seq_len
        self.pad_id = pad_id
        self.rows = rows
        lengths = offsets[self.documents + 1] - offsets[self.documents]
        if rows == "minimind2":
            lengths = lengths - 2  # without bos and eos
        kept_lengths = np.minimum(lengths, max_seq_len + 1)
        self.num_label_tokens = int(np.maximum(kept_lengths - 1, 0).sum())

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"document {index} out of range for {len(self)} documents")
        document_index = int(self.documents[index])
        start, end = int(self.offsets[document_index]), int(self.offsets[document_index + 1])
        document = self.tokens[start:end]
        if self.rows == "minimind2":
            row = document[1:-1][:self.max_seq_len + 1]
        elif len(document) > self.max_seq_len + 1:
            row = np.concatenate([document[:self.max_seq_len], document[-1:]])
        else:
            row = document
        sample = shifted_sample(row, self.max_seq_len, self.pad_id)
        sample["targets"][sample["targets"] == self.pad_id] = IGNORE_INDEX
        return sample


def shifted_sample(ids: np.ndarray, max_seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Turn n <= max_seq_len + 1 real tokens (none: a row of padding) into a padded, shifted sample.

    The ids are padded with ``pad_id`` to L + 1 (L = max_seq_len); returns ``input_ids`` (L,) =
    padded[:-1] and ``targets`` (L,) = padded[1:] with the padding replaced by IGNORE_INDEX, int64.
    """
    ids = torch.from_numpy(np.array(ids, dtype=np.int64))
    input_ids = torch.full((max_seq_len,), pad_id, dtype=torch.long)
    targets = torch.full((max_seq_len,), IGNORE_INDEX, dtype=torch.long)
    input_ids[:min(len(ids), max_seq_len)] = ids[:max_seq_len]
    targets[:max(len(ids) - 1, 0)] = ids[1:]
    return {"input_ids": input_ids, "targets": targets}


class RepeatedSamples(Dataset):
    """``samples`` ``repeats`` times over: sample i is ``samples[i % len(samples)]``.

    For a corpus smaller than a few global batches (the bundled corpus on a large cluster).
    """

    def __init__(self, samples: Dataset, repeats: int):
        if repeats < 1:
            raise ValueError(f"repeats must be positive, got {repeats}")
        self.samples = samples
        self.repeats = repeats

    def __len__(self) -> int:
        return len(self.samples) * self.repeats

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.samples[index % len(self.samples)]
