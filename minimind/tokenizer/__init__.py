"""MiniMind's tokenizer: loading and validating a tokenizer folder, and naming it for cache keys.

Train one with ``python -m minimind.tokenizer.train``; ``load_tokenizer()`` gives the shipped
default in ``minimind/tokenizer/default/``.
"""

from minimind.tokenizer.loader import (
    BOS_ID,
    DEFAULT_TOKENIZER_DIR,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    TokenizerLayoutError,
    load_tokenizer,
    require_chat_template,
    tokenizer_fingerprint,
)

__all__ = [
    "BOS_ID",
    "DEFAULT_TOKENIZER_DIR",
    "EOS_ID",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "TokenizerLayoutError",
    "load_tokenizer",
    "require_chat_template",
    "tokenizer_fingerprint",
]
