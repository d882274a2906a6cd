"""Supervised fine-tuning data: chat conversations rendered with a chat template, as samples.

The input is MiniMind's: JSON Lines, one ``{"conversations": [{"role": ..., "content": ...}, ...]}`` per line
(plain, ``.gz`` or ``.zst``), roles ``system``, ``user``, ``assistant`` and ``tool``. Each conversation becomes the
row of the ``SFTDataset`` of the model family's MiniMind with ``max_length = max_seq_len + 1`` (``rows``):
``minimind2`` (e119db8, the default) renders with the tokenizer's chat template, a first ``system`` turn's
``functions`` as its tools; ``minimind3`` (d65ef2c) as ``minimind.data.minimind3_chat`` says. The rendered text's
token ids are cut to max_length and padded, with the loss mask of the family's ``generate_loss_mask`` or
``generate_labels`` (``assistant_loss_mask``). A row gives ``input_ids = row[:-1]`` and ``targets = row[1:]``
where the mask is set, else ``IGNORE_INDEX``, as ``PaddedDocuments`` does for pretraining.
``PaddedConversations`` serves one row per sample (``--packing 0``); ``PackedConversations`` puts several
conversations in one window, each attending only to itself (``minimind.model.packed_attention``). Bad input is a
:class:`DataError` naming the file and line.
"""

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerFast

from minimind.data.jsonl_reader import MAX_LINE_BYTES, DataError, decompressed, parse_object, read_line
from minimind.data.minimind3_chat import check_turn_fields, conversation_random, sft_text
from minimind.data.windows import PADDED_ROWS
from minimind.model.loss import IGNORE_INDEX
from minimind.tokenizer import PAD_ID, require_chat_template

ROLES = ("system", "user", "assistant", "tool")  # the roles MiniMind's template renders
ENCODE_CHUNK = 1024  # conversations tokenized in one call


def jsonl_records(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for every non-blank line of a JSON Lines file (plain or compressed), with the
    text reader's checks (``jsonl_reader.read_line`` and ``parse_object``): a line that is too long, not UTF-8,
    not JSON or not an object is a DataError naming the file and line."""
    path = Path(path)
    try:
        file = open(path, "rb")
    except OSError as error:
        raise DataError(path, None, f"cannot open ({error.strerror or error})") from None
    with file, decompressed(file, path) as handle:
        number = 0
        while raw := read_line(handle, path, MAX_LINE_BYTES):
            number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise DataError(path, number, f"line longer than {MAX_LINE_BYTES} bytes")
            record = parse_object(raw, (path, number), number == 1, "an object")
            if record is not None:
                yield number, record


def checked_messages(record: dict, field: str, path: str | Path, line: int, rows: str = "minimind2") -> list[dict]:
    """``record[field]`` as a conversation: a list of turns with a known role and string content, at least one
    of them the assistant's, and ``functions`` (a list) only on a first system turn, or for minimind3 ``rows``
    none but its own tool and reasoning fields (``check_turn_fields``); else a DataError."""
    messages = record.get(field)
    if not isinstance(messages, list) or not messages:
        raise DataError(path, line, f'expected "{field}": a non-empty list of turns')
    for number, turn in enumerate(messages, start=1):
        if not isinstance(turn, dict):
            raise DataError(path, line, f'"{field}" turn {number} is not an object')
        if turn.get("role") not in ROLES:
            raise DataError(path, line, f'"{field}" turn {number} has role {turn.get("role")!r}, '
                                        f"expected one of {', '.join(ROLES)}")
        if not isinstance(turn.get("content"), str):
            raise DataError(path, line, f'"{field}" turn {number} has no "content" string')
        if "functions" in turn and not (number == 1 and turn["role"] == "system"
                                        and isinstance(turn["functions"], list)):
            raise DataError(path, line, f'"{field}" turn {number}: "functions" must be a list on a first system turn')
    if not any(turn["role"] == "assistant" for turn in messages):
        raise DataError(path, line, f'"{field}" has no assistant turn, so nothing to learn')
    if rows == "minimind3":
        check_turn_fields(messages, field, path, line)
    return messages


def check_rows(rows: str, tokenizer: PreTrainedTokenizerFast) -> None:
    """Raise ValueError for ``rows`` not in PADDED_ROWS; minimind2 rows render with the tokenizer's chat template,
    so it must have one (``require_chat_template``); minimind3 rows render with their family's."""
    if rows not in PADDED_ROWS:
        raise ValueError(f"rows must be one of {', '.join(PADDED_ROWS)}, got {rows!r}")
    if rows == "minimind2":
        require_chat_template(tokenizer)


def render_conversation(tokenizer: PreTrainedTokenizerFast, messages: list[dict], *, with_functions: bool) -> str:
    """The conversation's text by the chat template; ``with_functions``: a first system turn's ``functions`` are
    the template's tools (e119db8's ``SFTDataset.create_chat_prompt``; its ``DPODataset`` passes none)."""
    first = messages[0]
    tools = first["functions"] if with_functions and first["role"] == "system" and first.get("functions") else None
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False, tools=tools)


# Per family: what follows ``<|im_start|>assistant`` and ``<|im_end|>`` in the markers, and how many tokens the
# loss mask lies past them (e119db8 leaves the newline out of the markers and moves the mask on by one instead).
MARKER_SUFFIX_AND_SHIFT = {"minimind2": ("", 1), "minimind3": ("\n", 0)}


@dataclass(frozen=True)
class AssistantMarkers:
    """The token ids that open (``<|im_start|>assistant``) and close (``<|im_end|>``) an assistant turn, and the
    shift of the loss mask past them."""

    start: list[int]
    end: list[int]
    shift: int

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerFast, rows: str = "minimind2") -> "AssistantMarkers":
        """The markers as the datasets of ``rows``' MiniMind tokenize them: e119db8's, or d65ef2c's with a newline
        after each and no shift."""
        suffix, shift = MARKER_SUFFIX_AND_SHIFT[rows]
        return cls(tokenizer(f"{tokenizer.bos_token}assistant{suffix}", add_special_tokens=False).input_ids,
                   tokenizer(f"{tokenizer.eos_token}{suffix}", add_special_tokens=False).input_ids, shift)


def assistant_loss_mask(ids: list[int], markers: AssistantMarkers, max_length: int) -> list[int]:
    """MiniMind's ``generate_loss_mask`` (e119db8; d65ef2c's ``generate_labels`` with ``shift`` 0) over a row of
    ``ids``: 1 from ``shift`` tokens after each opening marker through ``shift`` tokens after its closing marker
    (or to the row's end when the turn is not closed), never at or past ``max_length``; 0 elsewhere."""
    start_ids, end_ids, shift = markers.start, markers.end, markers.shift
    mask = [0] * len(ids)
    i = 0
    while i < len(ids):
        if ids[i:i + len(start_ids)] != start_ids:
            i += 1
            continue
        start = end = i + len(start_ids)
        while end < len(ids) and ids[end:end + len(end_ids)] != end_ids:
            end += 1
        for j in range(start + shift, min(end + len(end_ids) + shift, max_length)):
            mask[j] = 1
        i = end + len(end_ids) if end < len(ids) else len(ids)
    return mask


def padded_row(ids: np.ndarray, markers: AssistantMarkers, max_length: int,
               pad_id: int = PAD_ID) -> tuple[list[int], list[int]]:
    """MiniMind's row of one conversation's ids (at most max_length of them): padded to max_length with
    ``pad_id``, and its loss mask."""
    row = [int(token) for token in ids] + [pad_id] * (max_length - len(ids))
    return row, assistant_loss_mask(row, markers, max_length)


def masked_targets(row: list[int], mask: list[int]) -> torch.Tensor:
    """``row[1:]`` where ``mask[1:]`` is set, else IGNORE_INDEX: (len(row) - 1,) int64."""
    targets = torch.tensor(row[1:], dtype=torch.long)
    targets[torch.tensor(mask[1:], dtype=torch.bool).logical_not()] = IGNORE_INDEX
    return targets


@dataclass
class EncodedConversations:
    """Token ids of conversations, each cut to ``max_length``: conversation i is
    ``tokens[offsets[i]:offsets[i + 1]]``; ``cut[i]``: it was longer than max_length before the cut."""

    tokens: np.ndarray  # (num_tokens,) int32
    offsets: np.ndarray  # (num_conversations + 1,) int64
    max_length: int
    markers: AssistantMarkers
    cut: np.ndarray  # (num_conversations,) bool

    @classmethod
    def of(cls, texts: Iterable[str], tokenizer: PreTrainedTokenizerFast, max_length: int,
           rows: str = "minimind2") -> "EncodedConversations":
        """Tokenize rendered ``texts`` as MiniMind does (``tokenizer(text).input_ids``) and cut each to max_length,
        with the assistant markers of ``rows``; the texts are read and tokenized ``ENCODE_CHUNK`` at a time, so
        only the kept ids stay in memory."""
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (max_seq_len at least 1), got {max_length}")
        parts, lengths, cut = [], [], []
        remaining = iter(texts)
        while chunk := list(itertools.islice(remaining, ENCODE_CHUNK)):
            for ids in tokenizer(chunk).input_ids:
                cut.append(len(ids) > max_length)
                parts.append(np.array(ids[:max_length], dtype=np.int32))
                lengths.append(len(parts[-1]))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
        return cls(tokens, offsets, max_length, AssistantMarkers.of(tokenizer, rows), np.array(cut, dtype=bool))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_cut(self) -> int:
        """How many conversations were longer than max_length, and cut."""
        return int(self.cut.sum())

    def ids(self, index: int) -> np.ndarray:
        """Conversation ``index``'s token ids (at most max_length)."""
        return self.tokens[self.offsets[index]:self.offsets[index + 1]]

    def row(self, index: int) -> tuple[list[int], list[int]]:
        """MiniMind's padded row of conversation ``index`` and its loss mask (``padded_row``)."""
        return padded_row(self.ids(index), self.markers, self.max_length)

    def packed_part(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Conversation ``index``'s n - 1 inputs and targets (IGNORE_INDEX off the loss mask): its padded row's
        first n - 1 positions (n ids), without padding the row. The mask of the ids and a few pad tokens (as many
        as a closing marker and the mask's shift reach past the ids) is the row's over the ids: padding matches
        no marker."""
        ids = self.ids(index).astype(np.int64)
        reach = len(self.markers.end) + self.markers.shift
        mask = assistant_loss_mask([*ids.tolist(), *[PAD_ID] * reach], self.markers, self.max_length)
        targets = np.where(np.array(mask[1:len(ids)], dtype=bool), ids[1:], IGNORE_INDEX)
        return ids[:-1], targets

    def subset(self, indices: np.ndarray) -> "EncodedConversations":
        """The conversations ``indices`` (in that order) as a set of their own."""
        lengths = np.diff(self.offsets)[indices]
        offsets = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        parts = [self.ids(index) for index in indices]
        tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
        return EncodedConversations(tokens, offsets, self.max_length, self.markers, self.cut[indices])


def read_conversations(path: str | Path, tokenizer: PreTrainedTokenizerFast, max_seq_len: int,
                       rows: str = "minimind2", *, seed: int = 0) -> EncodedConversations:
    """Read, check, render and tokenize an SFT file's conversations for windows of ``max_seq_len`` model tokens
    (MiniMind's max_length = max_seq_len + 1), as the ``SFTDataset`` of ``rows``' MiniMind (PADDED_ROWS) does:
    minimind2 with the tokenizer's chat template, which it must have; minimind3 as ``minimind3_chat.sft_text``,
    conversation i drawing its random choices from ``conversation_random(seed, i)``."""
    check_rows(rows, tokenizer)
    messages = (checked_messages(record, "conversations", path, line, rows) for line, record in jsonl_records(path))
    if rows == "minimind3":
        texts = (sft_text(tokenizer, turns, conversation_random(seed, index)) for index, turns in enumerate(messages))
    else:
        texts = (render_conversation(tokenizer, turns, with_functions=True) for turns in messages)
    conversations = EncodedConversations.of(texts, tokenizer, max_seq_len + 1, rows)
    if not len(conversations):
        raise DataError(path, None, "no conversations")
    return conversations


class PaddedConversations(Dataset):
    """One conversation per sample (``--packing 0``), exactly the ``SFTDataset`` row of the conversations' MiniMind
    (e119db8 or d65ef2c) with max_length = max_seq_len + 1: ``{"input_ids": (max_seq_len,), "targets":
    (max_seq_len,)}``, targets masked to the assistant's tokens (``assistant_loss_mask``)."""

    def __init__(self, conversations: EncodedConversations):
        self.conversations = conversations

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"conversation {index} out of range for {len(self)} conversations")
        row, mask = self.conversations.row(index)
        return {"input_ids": torch.tensor(row[:-1], dtype=torch.long), "targets": masked_targets(row, mask)}

    def blank(self) -> dict[str, torch.Tensor]:
        """A sample of padding with no target (what an evaluation fills its last batch with)."""
        return blank_row(self.conversations.max_length - 1)


class PackedConversations(Dataset):
    """Whole conversations packed in file order into windows of max_seq_len positions, none split between two.

    A conversation of n tokens (cut as ``PaddedConversations`` cuts it) takes n - 1 positions: its ids but the
    last as inputs, and the targets of its padded row there, so its targets are exactly that row's (the row's
    padding has none). A window takes conversations while they fit; its rest is padding (``pad_id``, no
    targets). Samples: ``input_ids``, ``targets``, ``position_ids`` (0 at each conversation's first token) and
    ``segment_ids`` (the conversation's number in the window, -1 on padding, whose positions also count from
    0), all (max_seq_len,) int64. ``minimind.model.packed_attention`` keeps attention inside a conversation.
    """

    def __init__(self, conversations: EncodedConversations):
        self.conversations = conversations
        self.max_seq_len = conversations.max_length - 1
        positions = np.diff(conversations.offsets) - 1
        starts, used = [0], 0
        for index, taken in enumerate(positions):
            if used + taken > self.max_seq_len:
                starts.append(index)
                used = 0
            used += taken
        starts.append(len(positions))
        self.window_starts = np.array(starts, dtype=np.int64)  # window w holds conversations starts[w]:starts[w+1]

    def __len__(self) -> int:
        return len(self.window_starts) - 1

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        length = self.max_seq_len
        sample = {"input_ids": torch.full((length,), PAD_ID, dtype=torch.long),
                  "targets": torch.full((length,), IGNORE_INDEX, dtype=torch.long),
                  "position_ids": torch.zeros(length, dtype=torch.long),
                  "segment_ids": torch.full((length,), -1, dtype=torch.long)}
        used = 0
        first, last = self.window_starts[index], self.window_starts[index + 1]
        for segment, conversation in enumerate(range(first, last)):
            inputs, targets = self.conversations.packed_part(conversation)
            taken = len(inputs)
            span = slice(used, used + taken)
            sample["input_ids"][span] = torch.from_numpy(inputs)
            sample["targets"][span] = torch.from_numpy(targets)
            sample["position_ids"][span] = torch.arange(taken)
            sample["segment_ids"][span] = segment
            used += taken
        sample["position_ids"][used:] = torch.arange(length - used)
        return sample

    def blank(self) -> dict[str, torch.Tensor]:
        """A window of padding with no target (what an evaluation fills its last batch with)."""
        return {**blank_row(self.max_seq_len), "position_ids": torch.arange(self.max_seq_len),
                "segment_ids": torch.full((self.max_seq_len,), -1, dtype=torch.long)}


def blank_row(length: int) -> dict[str, torch.Tensor]:
    """``input_ids`` of padding and ``targets`` of IGNORE_INDEX, (length,) int64 each."""
    return {"input_ids": torch.full((length,), PAD_ID, dtype=torch.long),
            "targets": torch.full((length,), IGNORE_INDEX, dtype=torch.long)}
