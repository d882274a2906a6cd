"""Load a tokenizer folder with MiniMind's layout, and name a tokenizer by what it encodes.

The layout: ``tokenizer.json`` + ``tokenizer_config.json`` (loadable by
``transformers.AutoTokenizer``), with ``<|endoftext|>`` (pad, unk) at id 0, ``<|im_start|>``
(bos) at id 1 and ``<|im_end|>`` (eos) at id 2. Our shipped tokenizer and MiniMind's official
one both have it.
"""

import hashlib
import json
from pathlib import Path

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from minimind.errors import UserInputError, first_line

PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)  # in id order: 0, 1, 2
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
DEFAULT_TOKENIZER_DIR = Path(__file__).resolve().parent / "default"


class TokenizerLayoutError(UserInputError):
    """A tokenizer folder that is missing or lacks MiniMind's layout; one line naming the folder."""

    def __init__(self, folder: str | Path, reason: str):
        self.folder = str(folder)
        super().__init__(f"{folder}: {reason}")


def tokenizer_folder(path: str | Path | None = None) -> Path:
    """The tokenizer folder ``path`` names (None: the shipped default)."""
    return DEFAULT_TOKENIZER_DIR if path is None else Path(path)


def load_tokenizer(path: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Load and validate a tokenizer folder (None: the shipped default) as a transformers fast tokenizer.

    Raises TokenizerLayoutError when the folder is missing, lacks the tokenizer files, or does
    not hold the three special tokens at ids 0/1/2 with the pad/bos/eos roles.
    """
    folder = tokenizer_folder(path)
    if not folder.is_dir():
        raise TokenizerLayoutError(folder, "tokenizer folder not found")
    for name in TOKENIZER_FILES:
        if not (folder / name).is_file():
            raise TokenizerLayoutError(folder, f"missing {name}")
    try:
        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as error:  # the Rust binding raises a bare Exception for any parse failure
        raise TokenizerLayoutError(folder, f"unreadable tokenizer.json ({first_line(error)})") from None
    for token_id, token in enumerate(SPECIAL_TOKENS):
        found = backend.id_to_token(token_id)
        if found != token:
            raise TokenizerLayoutError(folder, f"id {token_id} is {found!r}, expected {token!r}")
    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    except (OSError, ValueError) as error:
        raise TokenizerLayoutError(folder, f"transformers cannot load it ({first_line(error)})") from None
    roles = {"pad": (tokenizer.pad_token_id, PAD_ID), "bos": (tokenizer.bos_token_id, BOS_ID),
             "eos": (tokenizer.eos_token_id, EOS_ID)}
    for role, (found_id, expected_id) in roles.items():
        if found_id != expected_id:
            raise TokenizerLayoutError(folder, f"{role} token id is {found_id}, expected {expected_id} "
                                               f"({SPECIAL_TOKENS[expected_id]!r})")
    return tokenizer


def require_chat_template(tokenizer: PreTrainedTokenizerFast) -> None:
    """Raise TokenizerLayoutError (one line naming the folder) when ``tokenizer`` has no chat template, which
    supervised fine-tuning and preference training render conversations with."""
    if not tokenizer.chat_template:
        raise TokenizerLayoutError(tokenizer.name_or_path, "no chat_template in tokenizer_config.json; SFT and DPO "
                                                           "render conversations with it (MiniMind's is ChatML)")


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """Return a sha256 hex digest of everything that decides the token ids a text encodes to.

    Hashes the backend's model, normalizer, pre-tokenizer and added tokens, not the padding,
    truncation or post-processor state that transformers changes at run time, nor the chat template
    (how conversations are written as text, not how text is tokenized), so two loads of the same
    files give the same fingerprint wherever they live.
    """
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    identity = {key: state.get(key) for key in ("added_tokens", "normalizer", "pre_tokenizer", "model")}
    canonical = json.dumps(identity, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
