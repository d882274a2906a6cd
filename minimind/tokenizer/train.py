"""Train a byte-level BPE tokenizer with MiniMind's layout from a JSON Lines corpus.

    python -m minimind.tokenizer.train [--corpus PATH] [--out DIR] [--vocab_size 6400]

Defaults: the default corpus (built on first use) and ``minimind/tokenizer/default/``, the
tokenizer shipped with this package. Writes ``tokenizer.json`` and ``tokenizer_config.json``.
"""

import json
import sys
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from minimind.data.default_corpus import default_corpus_path
from minimind.data.text_sources import text_reader
from minimind.errors import UserInputError
from minimind.flags import FlagParser, number_at_least
from minimind.tokenizer.loader import (
    BOS_TOKEN,
    DEFAULT_TOKENIZER_DIR,
    EOS_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    TokenizerLayoutError,
)

MODEL_MAX_LENGTH = 131072  # MiniMind's tokenizer_config value; the model config bounds real lengths
# The special tokens and the 256 byte-level symbols come first.
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256
MAX_VOCAB_SIZE = 2**32  # the token cache stores uint32 ids past 65,536


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, *, vocab_size: int = 6400,
                    show_progress: bool = True) -> Path:
    """Train byte-level BPE on ``texts`` and write tokenizer.json + tokenizer_config.json to ``out_dir``.

    Special tokens take ids 0, 1, 2 (``SPECIAL_TOKENS``); returns ``out_dir``.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for token_id, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != token_id:
            raise TokenizerLayoutError(out_dir, f"training put {token!r} at id {tokenizer.token_to_id(token)}, "
                                                f"expected {token_id}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2) + "\n")
    return out


def tokenizer_config() -> dict:
    """Return the tokenizer_config.json contents: PreTrainedTokenizerFast, no automatic bos/eos, and the shipped
    tokenizer's chat template (MiniMind's ChatML layout, which fine-tuning renders conversations with)."""
    chat_template = json.loads((DEFAULT_TOKENIZER_DIR / "tokenizer_config.json").read_text())["chat_template"]
    added_tokens = {
        str(token_id): {"content": token, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": True}
        for token_id, token in enumerate(SPECIAL_TOKENS)
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": PAD_TOKEN,
        "clean_up_tokenization_spaces": False,
        "spaces_between_special_tokens": False,
        "chat_template": chat_template,
        "model_max_length": MODEL_MAX_LENGTH,
    }


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (see the module docstring)."""
    parser = FlagParser(prog="python -m minimind.tokenizer.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=None,
                        help="JSON Lines (.jsonl, .gz, .zst) or Parquet file of texts (default: the default corpus)")
    parser.add_argument("--out", type=Path, default=DEFAULT_TOKENIZER_DIR,
                        help="output folder (default: the shipped minimind/tokenizer/default)")
    parser.add_argument("--vocab_size", type=number_at_least(MIN_VOCAB_SIZE, maximum=MAX_VOCAB_SIZE), default=6400,
                        help="past 65,536 the token cache stores uint32 ids, twice the disk of uint16")
    try:
        args = parser.parse_args(argv)
        corpus = args.corpus if args.corpus is not None else default_corpus_path()
        out = train_tokenizer(text_reader(corpus), args.out, vocab_size=args.vocab_size)
    except UserInputError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        sys.exit(error.exit_status)
    print(f"tokenizer trained on {corpus} written to {out}")


if __name__ == "__main__":
    main()
