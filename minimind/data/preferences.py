"""Preference pairs for DPO: a chosen and a rejected conversation that share their prompt.

The input is MiniMind's: JSON Lines, one ``{"chosen": [turns], "rejected": [turns]}`` per line, turns as in
``minimind.data.conversations``. Each side becomes the row of the ``DPODataset`` of the model family's MiniMind
(``rows``: e119db8's minimind2, the default, or d65ef2c's minimind3) with ``max_length = max_seq_len + 1``
(rendered without tools, as both do; cut, padded, masked by ``assistant_loss_mask``). The prompt
(the turns before the last assistant turn) must be the same on both sides, else the pair teaches nothing about
the answer: a :class:`DataError` naming the file and line, as is any bad conversation.
"""

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerFast

from minimind.data.conversations import (
    EncodedConversations,
    blank_row,
    check_rows,
    checked_messages,
    jsonl_records,
    masked_targets,
    render_conversation,
)
from minimind.data.jsonl_reader import DataError
from minimind.data.minimind3_chat import conversation_random, dpo_text

SIDES = ("chosen", "rejected")


def prompt_turns(messages: list[dict]) -> list[dict]:
    """The turns before the conversation's last assistant turn."""
    last = max(number for number, turn in enumerate(messages) if turn["role"] == "assistant")
    return messages[:last]


class PreferencePairs(Dataset):
    """A DPO file's pairs as samples ``{"chosen_input_ids", "chosen_targets", "rejected_input_ids",
    "rejected_targets"}``, each (max_seq_len,) int64: exactly the ``DPODataset`` rows (``x_*``, and ``y_*`` where
    ``mask_*`` is set, else IGNORE_INDEX) of ``rows``' MiniMind (``PADDED_ROWS``): minimind2 (e119db8) with the
    tokenizer's chat template, which it must have; minimind3 (d65ef2c) as ``minimind3_chat.dpo_text``, pair i
    drawing its random choices from ``conversation_random(seed, i)``. ``num_cut`` counts the sides longer than a
    row."""

    def __init__(self, path: str | Path, tokenizer: PreTrainedTokenizerFast, max_seq_len: int,
                 rows: str = "minimind2", *, seed: int = 0):
        check_rows(rows, tokenizer)
        texts = {side: [] for side in SIDES}
        for index, (line, record) in enumerate(jsonl_records(path)):
            pair = {side: checked_messages(record, side, path, line, rows) for side in SIDES}
            if prompt_turns(pair["chosen"]) != prompt_turns(pair["rejected"]):
                raise DataError(path, line, "chosen and rejected differ before their last assistant turn")
            if rows == "minimind3":
                draws = conversation_random(seed, index)
                for side in SIDES:  # chosen first, as upstream draws
                    texts[side].append(dpo_text(tokenizer, pair[side], draws))
            else:
                for side in SIDES:
                    texts[side].append(render_conversation(tokenizer, pair[side], with_functions=False))
        if not texts["chosen"]:
            raise DataError(path, None, "no preference pairs")
        self.sides = {side: EncodedConversations.of(texts[side], tokenizer, max_seq_len + 1, rows)
                      for side in SIDES}

    @property
    def num_cut(self) -> int:
        """How many sides (chosen or rejected answers) were longer than a row, and cut."""
        return sum(encoded.num_cut for encoded in self.sides.values())

    def subset(self, indices: np.ndarray) -> "PreferencePairs":
        """The pairs ``indices`` (in that order) as a set of their own."""
        pairs = object.__new__(PreferencePairs)
        pairs.sides = {side: encoded.subset(indices) for side, encoded in self.sides.items()}
        return pairs

    def __len__(self) -> int:
        return len(self.sides["chosen"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"pair {index} out of range for {len(self)} pairs")
        sample = {}
        for side, encoded in self.sides.items():
            row, mask = encoded.row(index)
            sample[f"{side}_input_ids"] = torch.tensor(row[:-1], dtype=torch.long)
            sample[f"{side}_targets"] = masked_targets(row, mask)
        return sample

    def blank(self) -> dict[str, torch.Tensor]:
        """A pair of padding with no target (what an evaluation fills its last batch with)."""
        length = self.sides["chosen"].max_length - 1
        return {f"{side}_{key}": value for side in SIDES for key, value in blank_row(length).items()}
