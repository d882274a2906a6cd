"""The samples of the fine-tuning stages: conversations (SFT) or preference pairs (DPO) from one JSON Lines file,
the bundled sets where none is named, with a validation set held out of it or read from its own file.

Every rank reads and tokenizes the file itself (conversation sets are small next to pretraining corpora), before
the process group exists, so bad data is one line naming the file and line on every rank alike.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerFast

from minimind.data.conversations import (
    EncodedConversations,
    PackedConversations,
    PaddedConversations,
    read_conversations,
)
from minimind.data.default_conversations import default_conversation_paths
from minimind.data.pipeline import DataSettings, split_held_out
from minimind.data.preferences import PreferencePairs
from minimind.data.token_cache import source_identity
from minimind.errors import ConfigError

CHAT_DATA = ("conversations", "preferences")  # the kinds of data read here (``Stage.data``)


@dataclass
class ChatSamples:
    """A fine-tuning stage's training and validation samples, and what identifies its data."""

    train: Dataset
    validation: Dataset | None
    path: Path  # the training file
    content_digest: str  # blake2b of the training file's bytes
    lines: list[str]  # what the run reports about the data


def chat_data_path(kind: str, settings: DataSettings, log: Callable[[str], None]) -> Path:
    """The one training file of a ``kind`` stage: ``--data_path``'s, or the bundled set (built on first use). More
    than one file, or a mixture, is a ``ConfigError``."""
    if not settings.sources:
        sft_path, dpo_path = default_conversation_paths(log=log)
        return sft_path if kind == "conversations" else dpo_path
    paths = settings.data_paths
    if settings.is_mixture or len(paths) != 1:
        raise ConfigError(f"--data_path: the {kind} stage reads one JSON Lines file, got "
                          f"{settings.description()}")
    return paths[0]


def load_chat_samples(kind: str, settings: DataSettings, tokenizer: PreTrainedTokenizerFast,
                      log: Callable[[str], None]) -> ChatSamples:
    """Read a ``kind`` file (``CHAT_DATA``) into training samples (conversations packed or padded as
    ``settings.packing`` says; preference pairs always padded, as MiniMind's) and the validation samples:
    ``eval_fraction`` of the file's records held out (the same ones on any number of ranks), or
    ``eval_data_path``'s file, or none."""
    path = chat_data_path(kind, settings, log)
    records = read_records(kind, path, tokenizer, settings)
    lines = [describe(kind, path, records, settings.max_seq_len)]
    held_out = None
    if settings.eval_fraction:
        split = split_held_out(len(records), settings.eval_fraction, str(path))
        records, held_out = records.subset(split.train), records.subset(split.held_out)
        lines.append(f"validation: {len(held_out)} {noun(kind)} held out ({settings.eval_fraction:g} of the file)")
    elif settings.eval_data_path:
        held_out = read_records(kind, Path(settings.eval_data_path), tokenizer, settings)
        lines.append(f"validation: {describe(kind, Path(settings.eval_data_path), held_out, settings.max_seq_len)}")
    train = samples_of(records, settings.packing)
    validation = samples_of(held_out, settings.packing) if held_out is not None else None
    if isinstance(train, PackedConversations):
        lines.append(f"packing: {len(records)} conversations in {len(train)} windows of {settings.max_seq_len} "
                     "tokens, each attending only to itself")
    return ChatSamples(train, validation, path, source_identity(path)["blake2b"], lines)


def read_records(kind: str, path: Path, tokenizer: PreTrainedTokenizerFast,
                 settings: DataSettings) -> EncodedConversations | PreferencePairs:
    """A file's conversations or preference pairs, checked and tokenized into rows of ``max_seq_len + 1`` tokens
    as the family's MiniMind makes them (``settings.padded_rows``; minimind3's random choices seeded by the
    run's seed, the same on every rank)."""
    if kind == "conversations":
        return read_conversations(path, tokenizer, settings.max_seq_len, settings.padded_rows, seed=settings.seed)
    return PreferencePairs(path, tokenizer, settings.max_seq_len, settings.padded_rows, seed=settings.seed)


def samples_of(records: EncodedConversations | PreferencePairs, packing: bool) -> Dataset:
    """The samples of ``records``: preference pairs as they are, conversations packed or one per row."""
    if isinstance(records, PreferencePairs):
        return records
    return PackedConversations(records) if packing else PaddedConversations(records)


def noun(kind: str) -> str:
    """What one record of ``kind`` is called."""
    return "conversations" if kind == "conversations" else "preference pairs"


def describe(kind: str, path: Path, records: EncodedConversations | PreferencePairs, max_seq_len: int) -> str:
    """``{path}: N conversations (M cut to max_seq_len + 1 tokens, as MiniMind cuts them)``."""
    cut = (f", {records.num_cut} {'sides ' if kind == 'preferences' else ''}cut to {max_seq_len + 1} tokens "
           "as MiniMind cuts them" if records.num_cut else "")
    return f"{path}: {len(records)} {noun(kind)}{cut}"
